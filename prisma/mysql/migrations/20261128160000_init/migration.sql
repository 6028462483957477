-- The schema of prisma/mysql/schema.prisma (derived from prisma/schema.prisma by `npm run
-- generate`) as one migration: MySQL/MariaDB support starts from the current model, so the
-- PostgreSQL history before it is not replayed. Written in the SQL Prisma's MySQL schema engine
-- generates for these models; the WebAssembly engine this project migrates with supports only
-- PostgreSQL and SQLite, and tests/integration/mysql-schema.test.ts checks this SQL against the
-- schema instead.

-- CreateTable
CREATE TABLE `users` (
    `id` INTEGER NOT NULL AUTO_INCREMENT,
    `username` VARCHAR(50) NOT NULL,
    `username_key` VARCHAR(50) NOT NULL,
    `email` VARCHAR(255) NOT NULL,
    `password_hash` VARCHAR(255) NOT NULL,
    `first_name` VARCHAR(50) NULL,
    `last_name` VARCHAR(50) NULL,
    `phone` VARCHAR(20) NULL,
    `avatar_url` VARCHAR(500) NULL,
    `role` ENUM('ADMIN', 'USER', 'GUEST') NOT NULL DEFAULT 'USER',
    `status` ENUM('ACTIVE', 'INACTIVE', 'SUSPENDED', 'DELETED') NOT NULL DEFAULT 'ACTIVE',
    `is_verified` BOOLEAN NOT NULL DEFAULT false,
    `is_active` BOOLEAN NOT NULL DEFAULT true,
    `created_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    `updated_at` DATETIME(3) NOT NULL,
    `last_login_at` DATETIME(3) NULL,
    `version` INTEGER NOT NULL DEFAULT 1,

    UNIQUE INDEX `users_username_key_key`(`username_key`),
    UNIQUE INDEX `users_email_key`(`email`),
    INDEX `users_role_status_idx`(`role`, `status`),
    INDEX `users_created_at_id_idx`(`created_at`, `id`),
    INDEX `users_last_login_at_id_idx`(`last_login_at`, `id`),
    PRIMARY KEY (`id`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- CreateTable
CREATE TABLE `oauth_tokens` (
    `id` INTEGER NOT NULL AUTO_INCREMENT,
    `user_id` INTEGER NOT NULL,
    `family_id` CHAR(36) NOT NULL,
    `access_token_hash` CHAR(64) NOT NULL,
    `refresh_token_hash` CHAR(64) NOT NULL,
    `token_type` VARCHAR(50) NOT NULL DEFAULT 'Bearer',
    `access_expires_at` DATETIME(3) NOT NULL,
    `expires_at` DATETIME(3) NOT NULL,
    `family_expires_at` DATETIME(3) NOT NULL,
    `client_name` VARCHAR(100) NULL,
    `ip_address` VARCHAR(45) NULL,
    `user_agent` VARCHAR(500) NULL,
    `is_revoked` BOOLEAN NOT NULL DEFAULT false,
    `revoked_reason` VARCHAR(20) NULL,
    `created_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    `updated_at` DATETIME(3) NOT NULL,

    UNIQUE INDEX `oauth_tokens_access_token_hash_key`(`access_token_hash`),
    UNIQUE INDEX `oauth_tokens_refresh_token_hash_key`(`refresh_token_hash`),
    INDEX `oauth_tokens_user_id_is_revoked_idx`(`user_id`, `is_revoked`),
    INDEX `oauth_tokens_family_id_idx`(`family_id`),
    PRIMARY KEY (`id`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- CreateTable
CREATE TABLE `audit_events` (
    `id` INTEGER NOT NULL AUTO_INCREMENT,
    `type` ENUM('LOGIN_SUCCEEDED', 'LOGIN_FAILED', 'LOGOUT', 'TOKENS_REVOKED', 'PASSWORD_CHANGED', 'ROLE_CHANGED', 'STATUS_CHANGED', 'USER_DELETED', 'TOKEN_REUSE_DETECTED', 'LOGIN_FAILURES_CLEARED', 'PASSWORD_CHANGE_FAILED', 'USER_VERIFIED', 'USER_UPDATED') NOT NULL,
    `user_id` INTEGER NULL,
    `actor_id` INTEGER NULL,
    `ip_address` VARCHAR(45) NULL,
    `user_agent` VARCHAR(500) NULL,
    `details` JSON NULL,
    `created_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),

    INDEX `audit_events_created_at_idx`(`created_at`),
    INDEX `audit_events_user_id_created_at_idx`(`user_id`, `created_at`),
    INDEX `audit_events_type_created_at_idx`(`type`, `created_at`),
    PRIMARY KEY (`id`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- CreateTable
CREATE TABLE `idempotency_records` (
    `id` INTEGER NOT NULL AUTO_INCREMENT,
    `key_hash` CHAR(64) NOT NULL,
    `fingerprint` CHAR(64) NOT NULL,
    `answer` LONGBLOB NULL,
    `created_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    `expires_at` DATETIME(3) NOT NULL,

    UNIQUE INDEX `idempotency_records_key_hash_key`(`key_hash`),
    INDEX `idempotency_records_expires_at_idx`(`expires_at`),
    PRIMARY KEY (`id`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- AddForeignKey
ALTER TABLE `oauth_tokens` ADD CONSTRAINT `oauth_tokens_user_id_fkey` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`) ON DELETE CASCADE ON UPDATE CASCADE;
