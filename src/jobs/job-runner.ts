// Background work: writing audit events off the request path, and purging stale sessions (and
// expired idempotency records, and audit events past their retention) on a schedule. With Redis, both go through BullMQ so that several
// processes share one queue and the purge runs once per interval for all of them
// (bullmq-job-runner.ts); without Redis, they run inside this process (in-process-job-runner.ts).
import { InProcessJobRunner } from './in-process-job-runner.ts';
import { errorText, type JobRunner, type JobRunnerOptions, type RunnerContext } from './jobs.ts';

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
    // The three purges are independent: a session purge that fails (a lock wait ran out on a
    // large table, say) no longer skips the audit log's retention, which is a promise about how
    // long addresses and agents are kept (helper 121). Each failure is logged and counted; the
    // run fails, as a whole, once all three have had their turn.
    purge: async () => {
      const purges: [string, () => Promise<number>][] = [
        ['stale sessions', () => options.tokenRepository.purgeStale(now(), options.purgeRetentionMs)],
        // Expired records are already ignored and replaced by new claims; this only reclaims space.
        ['expired idempotency records', () => options.idempotencyRepository.purgeExpired(now())],
      ];
      if (options.auditRetentionMs > 0) {
        purges.push(['audit events past their retention', () => options.auditRepository.purgeBefore(new Date(now().getTime() - options.auditRetentionMs))]);
      }
      let deleted = 0;
      const failures: unknown[] = [];
      for (const [what, purge] of purges) {
        const started = Date.now();
        try {
          const count = await purge();
          deleted += count;
          logger.info({ deleted: count, durationMs: Date.now() - started }, `purged ${what}`);
        } catch (error) {
          failures.push(error);
          logger.error({ err: errorText(error) }, `purge of ${what} failed`);
        }
      }
      if (failures.length > 0) throw new AggregateError(failures, `${failures.length} of ${purges.length} purges failed`);
      return deleted;
    },
  };
  if (options.redis === undefined) return new InProcessJobRunner(context, options.purgeIntervalMs);
  // BullMQ and ioredis load only in a process that uses them.
  const { BullMqJobRunner } = await import('./bullmq-job-runner.ts');
  return BullMqJobRunner.start(context, options.redis, options.purgeIntervalMs);
}
