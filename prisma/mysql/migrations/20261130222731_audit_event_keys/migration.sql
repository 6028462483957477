-- The key an audit event's writer chose (see prisma/migrations/…_audit_event_keys).
ALTER TABLE `audit_events` ADD COLUMN `event_key` CHAR(36) NULL;

CREATE UNIQUE INDEX `audit_events_event_key_key` ON `audit_events`(`event_key`);
