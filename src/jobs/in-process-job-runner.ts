// The job runner of a process without Redis: audit events are written in batches off the request
// path and the session purge runs on a timer, all inside this process.
import { setTimeout as sleep } from 'node:timers/promises';
import { UnavailableError } from '../domain/errors.ts';
import { detachedFromRequest } from '../infrastructure/call-context.ts';
import { rateLimitedWarning } from '../infrastructure/logger.ts';
import type { NewAuditEvent } from '../repositories/audit-repository.ts';
import { toNewAuditEvent, type AuditEventInput, type AuditLog } from '../services/audit-use-cases.ts';
import { AUDIT_QUEUE, errorText, MAINTENANCE_QUEUE, withWriteAt, type JobRunner, type RunnerContext } from './jobs.ts';

/** Events waiting in memory beyond this many are dropped (and counted) rather than exhausting memory. */
const MAX_PENDING_EVENTS = 10_000;
/** At most one line per this many ms says that events are being dropped, with how many. */
const DROP_LOG_INTERVAL_MS = 60_000;
const WRITE_BATCH_SIZE = 500;
/** Waits between attempts at a batch the database could not take: 1 s, doubling up to 30 s. */
const FIRST_RETRY_MS = 1_000;
const MAX_RETRY_MS = 30_000;
/** One process, no Redis: audit rows are written in batches after the request moves on. */
export class InProcessJobRunner implements JobRunner {
  readonly audit: AuditLog;
  readonly #context: RunnerContext;
  readonly #timer: NodeJS.Timeout;
  #pending: NewAuditEvent[] = [];
  #draining: Promise<void> | undefined;
  #purging: Promise<number> | undefined;
  /** Aborted by close(): a wait before the next attempt ends, and a batch failing then is not tried again. */
  readonly #closing = new AbortController();
  /**
   * Says that the backlog is full. One error line per dropped event, each carrying the client's
   * agent, let a client grow the log at twice its request rate while the database was away
   * (helper 140); the drops are counted in the next line, and as the audit queue's failures.
   */
  readonly #dropped: (fields: Record<string, unknown>) => void;

  constructor(context: RunnerContext, purgeIntervalMs: number) {
    this.#context = context;
    this.#dropped = rateLimitedWarning(context.logger, 'audit backlog full; events dropped', DROP_LOG_INTERVAL_MS);
    this.audit = { record: (event) => this.#record(event), withWrite: withWriteAt(context.now) };
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
    this.#closing.abort();
    clearInterval(this.#timer);
    await Promise.allSettled([this.#draining, this.#purging]);
  }

  #record(input: AuditEventInput): void {
    try {
      if (this.#pending.length >= MAX_PENDING_EVENTS) {
        this.#context.jobFailed(AUDIT_QUEUE);
        this.#dropped({ type: input.type, pending: this.#pending.length });
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
    let retryMs = FIRST_RETRY_MS;
    while (this.#pending.length > 0) {
      const batch = this.#pending.splice(0, WRITE_BATCH_SIZE);
      try {
        await this.#context.audit.createMany(batch);
        retryMs = FIRST_RETRY_MS;
      } catch (error) {
        this.#context.jobFailed(AUDIT_QUEUE);
        const unwritten = error instanceof UnavailableError ? { events: batch, error } : await this.#writeOneByOne(batch);
        if (unwritten === undefined) continue;
        if (this.#closing.signal.aborted) {
          // Shutting down with the database out of reach: logged in full, so that they are not
          // lost altogether, a line per event (helper 140: all in one line, 7.4 MB for a full
          // backlog, which log collectors cut at 16 KB).
          const events = [...unwritten.events, ...this.#pending.splice(0)];
          this.#context.logger.error({ err: errorText(unwritten.error), count: events.length }, 'could not write audit events before shutting down; each follows');
          for (const event of events) this.#context.logger.error({ event }, 'audit event not written');
        } else {
          // The database is busy or out of reach (a stall past its lock timeout, a restart): the
          // events go back first in line and are tried again, later and later, as the BullMQ
          // runner retries its jobs. They used to be logged and dropped at the first failure.
          this.#pending.unshift(...unwritten.events);
          this.#context.logger.warn({ err: errorText(unwritten.error), pending: this.#pending.length, retryInMs: retryMs }, 'could not write audit events; will retry');
          // close() cuts the wait short for one last attempt.
          await sleep(retryMs, undefined, { ref: false, signal: this.#closing.signal }).catch(() => undefined);
          retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
        }
      }
    }
    this.#draining = undefined;
  }

  /**
   * A batch the database refused for what it holds: each event is written on its own, so that one
   * it cannot take costs no other its row. Those it still refuses are logged in full, so that
   * they are not lost altogether. Should the database go out of reach meanwhile, the events not
   * yet written are returned, to go back in line (helper 125: they were logged and dropped).
   */
  async #writeOneByOne(batch: NewAuditEvent[]): Promise<{ events: NewAuditEvent[]; error: unknown } | undefined> {
    for (const [index, event] of batch.entries()) {
      try {
        await this.#context.audit.createMany([event]);
      } catch (error) {
        if (error instanceof UnavailableError) return { events: batch.slice(index), error };
        this.#context.logger.error({ err: errorText(error), event }, 'could not write audit event');
      }
    }
    return undefined;
  }

  async #scheduledPurge(): Promise<void> {
    // A purge that outlasts the interval is not started a second time alongside itself.
    if (this.#purging !== undefined) return;
    this.#purging = this.#context.purge();
    try {
      await this.#purging;
    } catch (error) {
      this.#context.jobFailed(MAINTENANCE_QUEUE);
      this.#context.logger.error({ err: errorText(error) }, 'purge failed');
    } finally {
      this.#purging = undefined;
    }
  }
}
