-- Usernames are unique regardless of case: uniqueness moves from the spelling given to its
-- lower-case fold, and login looks the fold up. Existing rows are folded first.
DROP INDEX "users_username_key";

ALTER TABLE "users" ADD COLUMN "username_key" VARCHAR(50);
UPDATE "users" SET "username_key" = lower("username");
ALTER TABLE "users" ALTER COLUMN "username_key" SET NOT NULL;

CREATE UNIQUE INDEX "users_username_key_key" ON "users"("username_key");

-- Every login chain gets an absolute end; chains that predate it end when their current
-- refresh token does.
ALTER TABLE "oauth_tokens" ADD COLUMN "family_expires_at" TIMESTAMP(3);
UPDATE "oauth_tokens" SET "family_expires_at" = "expires_at";
ALTER TABLE "oauth_tokens" ALTER COLUMN "family_expires_at" SET NOT NULL;

-- Why a pair was revoked, so that a refresh after logout is not mistaken for token theft.
ALTER TABLE "oauth_tokens" ADD COLUMN "revoked_reason" VARCHAR(20);
-- AlterEnum
ALTER TYPE "AuditEventType" ADD VALUE 'PASSWORD_CHANGE_FAILED';
