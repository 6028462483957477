// What both job runners share (see job-runner.ts): the queues, the runner's interface and the
// shape of a recorded audit event.
import type { Logger } from '../infrastructure/logger.ts';
import type { AuditRepository } from '../repositories/audit-repository.ts';
import type { IdempotencyRepository } from '../repositories/idempotency-repository.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import { toNewAuditEvent, type AuditLog } from '../services/audit-use-cases.ts';

/** BullMQ queue of audit events to write; its keys are `<prefix>:audit:…`. */
export const AUDIT_QUEUE = 'audit';
/** BullMQ queue of scheduled housekeeping jobs. */
export const MAINTENANCE_QUEUE = 'maintenance';
/** Job scheduler id and job name of the session purge. */
export const PURGE_SESSIONS = 'purge-sessions';

/** What createJobRunner needs; `now` is for tests. */
export interface JobRunnerOptions {
  /** BullMQ on this Redis, its keys under `prefix`; without it, jobs run in this process. */
  redis?: { url: string; prefix: string } | undefined;
  logger: Logger;
  auditRepository: AuditRepository;
  tokenRepository: Pick<TokenRepository, 'purgeStale'>;
  /** Expired idempotency records go with the same purge. */
  idempotencyRepository: Pick<IdempotencyRepository, 'purgeExpired'>;
  /** How often stale sessions are purged. */
  purgeIntervalMs: number;
  /** How long expired or dead revoked sessions are kept before they are purged. */
  purgeRetentionMs: number;
  /** How long audit events are kept; the purge deletes older ones. 0: kept for ever. */
  auditRetentionMs: number;
  /** Told of every failed job run (each failed attempt), by queue: `audit` or `maintenance`. */
  onJobFailed?: ((queue: string) => void) | undefined;
  now?: () => Date;
}

/** The background work of one process. */
export interface JobRunner {
  /** Where services record security events; see AuditLog. */
  readonly audit: AuditLog;
  /**
   * Purges stale sessions, expired idempotency records and audit events past their retention at
   * once, outside the schedule; returns how many rows were deleted.
   */
  runPurgeNow(): Promise<number>;
  /**
   * Jobs by queue and state, for metrics: BullMQ's counts (waiting, active, delayed, failed), or
   * in process the audit events waiting to be written.
   */
  queueDepth(): Promise<{ queue: string; state: string; count: number }[]>;
  /** Stops scheduling, lets work in progress finish and releases timers and connections. */
  close(): Promise<void>;
}

export interface RunnerContext {
  logger: Logger;
  audit: AuditRepository;
  now: () => Date;
  jobFailed: (queue: string) => void;
  purge: () => Promise<number>;
}

/** AuditLog.withWrite for a runner whose clock is `now`: the event is stamped, and the write stores it. */
export function withWriteAt(now: () => Date): AuditLog['withWrite'] {
  return (event, write) => write(event === undefined ? undefined : toNewAuditEvent(event, now()));
}

export const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));
