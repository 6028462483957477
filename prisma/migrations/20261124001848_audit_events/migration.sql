-- CreateEnum
CREATE TYPE "AuditEventType" AS ENUM ('LOGIN_SUCCEEDED', 'LOGIN_FAILED', 'LOGOUT', 'TOKENS_REVOKED', 'PASSWORD_CHANGED', 'ROLE_CHANGED', 'STATUS_CHANGED', 'USER_DELETED', 'TOKEN_REUSE_DETECTED', 'LOGIN_FAILURES_CLEARED');

-- CreateTable
CREATE TABLE "audit_events" (
    "id" SERIAL NOT NULL,
    "type" "AuditEventType" NOT NULL,
    "user_id" INTEGER,
    "actor_id" INTEGER,
    "ip_address" VARCHAR(45),
    "user_agent" VARCHAR(500),
    "details" JSONB,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "audit_events_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "audit_events_created_at_idx" ON "audit_events"("created_at");

-- CreateIndex
CREATE INDEX "audit_events_user_id_created_at_idx" ON "audit_events"("user_id", "created_at");

-- CreateIndex
CREATE INDEX "audit_events_type_created_at_idx" ON "audit_events"("type", "created_at");
