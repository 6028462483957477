// Background work: writing audit events off the request path, and purging stale sessions (and
// expired idempotency records, and audit events past their retention) on a schedule. With Redis, both go through BullMQ so that several
// processes share one queue and the purge runs once per interval for all of them
// (bullmq-job-runner.ts); without Redis, they run inside this process (in-process-job-runner.ts).
import { InProcessJobRunner } from './in-process-job-runner.ts';
import type { JobRunner, JobRunnerOptions, RunnerContext } from './jobs.ts';

export { AUDIT_QUEUE, MAINTENANCE_QUEUE, PURGE_SESSIONS, type JobRunner, type JobRunnerOptions } from './jobs.ts';

/** Starts the background work: on BullMQ when `redis` is given, in this process otherwise. */
export async function createJobRunner(options: JobRunnerOptions): Promise<JobRunner> {
  const logger = options.logger.child({ component: 'jobs' });
  const now = options.now ?? (() => new Date());
  const context: RunnerContext = {
    logger,
    audit: options.auditRepository,
    now,
    jobFailed: options.onJobFailed ?? (() => undefined),
    purge: async () => {
      const started = Date.now();
      const deleted = await options.tokenRepository.purgeStale(now(), options.purgeRetentionMs);
      logger.info({ deleted, durationMs: Date.now() - started }, 'purged stale sessions');
      // Expired records are already ignored and replaced by new claims; this only reclaims space.
      const idempotencyRecords = await options.idempotencyRepository.purgeExpired(now());
      logger.info({ deleted: idempotencyRecords }, 'purged expired idempotency records');
      if (options.auditRetentionMs === 0) return deleted + idempotencyRecords;
      const auditEvents = await options.auditRepository.purgeBefore(new Date(now().getTime() - options.auditRetentionMs));
      logger.info({ deleted: auditEvents }, 'purged audit events past their retention');
      return deleted + idempotencyRecords + auditEvents;
    },
  };
  if (options.redis === undefined) return new InProcessJobRunner(context, options.purgeIntervalMs);
  // BullMQ and ioredis load only in a process that uses them.
  const { BullMqJobRunner } = await import('./bullmq-job-runner.ts');
  return BullMqJobRunner.start(context, options.redis, options.purgeIntervalMs);
}
