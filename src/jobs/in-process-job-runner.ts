// The job runner of a process without Redis: audit events are written in batches off the request
// path and the session purge runs on a timer, all inside this process.
import { detachedFromRequest } from '../infrastructure/call-context.ts';
import type { NewAuditEvent } from '../repositories/audit-repository.ts';
import type { AuditEventInput, AuditLog } from '../services/audit-use-cases.ts';
import { AUDIT_QUEUE, errorText, MAINTENANCE_QUEUE, toNewAuditEvent, type JobRunner, type RunnerContext } from './jobs.ts';

/** Events waiting in memory beyond this many are dropped (and logged) rather than exhausting memory. */
const MAX_PENDING_EVENTS = 10_000;
const WRITE_BATCH_SIZE = 500;
/** One process, no Redis: audit rows are written in batches after the request moves on. */
export class InProcessJobRunner implements JobRunner {
  readonly audit: AuditLog;
  readonly #context: RunnerContext;
  readonly #timer: NodeJS.Timeout;
  #pending: NewAuditEvent[] = [];
  #draining: Promise<void> | undefined;
  #purging: Promise<number> | undefined;

  constructor(context: RunnerContext, purgeIntervalMs: number) {
    this.#context = context;
    this.audit = { record: (event) => this.#record(event) };
    // unref: a pending purge must not keep the process alive on its own.
    this.#timer = setInterval(() => void this.#scheduledPurge(), purgeIntervalMs).unref();
  }

  runPurgeNow(): Promise<number> {
    return this.#context.purge();
  }

  async queueDepth(): Promise<{ queue: string; state: string; count: number }[]> {
    return [{ queue: AUDIT_QUEUE, state: 'waiting', count: this.#pending.length }];
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    await Promise.allSettled([this.#draining, this.#purging]);
  }

  #record(input: AuditEventInput): void {
    try {
      if (this.#pending.length >= MAX_PENDING_EVENTS) {
        this.#context.logger.error({ event: input }, 'audit backlog full; event dropped');
        return;
      }
      this.#pending.push(toNewAuditEvent(input, this.#context.now()));
      // The writer outlives the request that woke it: it must not take on its deadline or signal.
      this.#draining ??= detachedFromRequest(() => this.#drain());
    } catch (error) {
      this.#context.logger.error({ err: errorText(error), event: input }, 'could not record audit event');
    }
  }

  async #drain(): Promise<void> {
    // Yield first, so the recording request carries on at once and events recorded in the same
    // turn are written together.
    await Promise.resolve();
    while (this.#pending.length > 0) {
      const batch = this.#pending.splice(0, WRITE_BATCH_SIZE);
      try {
        await this.#context.audit.createMany(batch);
      } catch (error) {
        this.#context.jobFailed(AUDIT_QUEUE);
        // The events are logged in full so that they are not lost altogether.
        this.#context.logger.error({ err: errorText(error), events: batch }, 'could not write audit events');
      }
    }
    this.#draining = undefined;
  }

  async #scheduledPurge(): Promise<void> {
    // A purge that outlasts the interval is not started a second time alongside itself.
    if (this.#purging !== undefined) return;
    this.#purging = this.#context.purge();
    try {
      await this.#purging;
    } catch (error) {
      this.#context.jobFailed(MAINTENANCE_QUEUE);
      this.#context.logger.error({ err: errorText(error) }, 'session purge failed');
    } finally {
      this.#purging = undefined;
    }
  }
}
