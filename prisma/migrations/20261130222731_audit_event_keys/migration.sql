-- An audit event carries the key its writer chose when it was recorded (src/jobs/jobs.ts), so
-- that a write repeated after its answer was lost stores it once: a queued event whose INSERT
-- committed but whose reply never came was written again by the job's retry, and an
-- administrator's change now stores its event in the change's own transaction, which a repeat of
-- the change between layers runs again. Events from before carry no key (NULL, never a conflict).
ALTER TABLE "audit_events" ADD COLUMN     "event_key" UUID;

-- CreateIndex
CREATE UNIQUE INDEX "audit_events_event_key_key" ON "audit_events"("event_key");
