-- Requests sent with an Idempotency-Key and their sealed answers (see schema.prisma). Only HMACs
-- and AES-256-GCM ciphertext are stored: no key, token or password in clear.
-- CreateTable
CREATE TABLE "idempotency_records" (
    "id" SERIAL NOT NULL,
    "key_hash" CHAR(64) NOT NULL,
    "fingerprint" CHAR(64) NOT NULL,
    "answer" BYTEA,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "expires_at" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "idempotency_records_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "idempotency_records_key_hash_key" ON "idempotency_records"("key_hash");

-- CreateIndex
CREATE INDEX "idempotency_records_expires_at_idx" ON "idempotency_records"("expires_at");
