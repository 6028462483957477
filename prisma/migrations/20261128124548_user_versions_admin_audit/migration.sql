-- Optimistic concurrency: every write to a user increments its version (the ETag), and the
-- audit log records verifications and profile edits.
-- AlterEnum
-- This migration adds more than one value to an enum.
-- With PostgreSQL versions 11 and earlier, this is not possible
-- in a single migration. This can be worked around by creating
-- multiple migrations, each migration adding only one value to
-- the enum.


ALTER TYPE "AuditEventType" ADD VALUE 'USER_VERIFIED';
ALTER TYPE "AuditEventType" ADD VALUE 'USER_UPDATED';

-- AlterTable
ALTER TABLE "users" ADD COLUMN     "version" INTEGER NOT NULL DEFAULT 1;
