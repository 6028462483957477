// What both job runners share (see job-runner.ts): the queues, the runner's interface and the
// shape of a recorded audit event.
import { USER_AGENT_MAX_LENGTH } from '../domain/actor.ts';
import type { Logger } from '../infrastructure/logger.ts';
import type { AuditRepository, NewAuditEvent } from '../repositories/audit-repository.ts';
import type { IdempotencyRepository } from '../repositories/idempotency-repository.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import type { AuditEventInput, AuditLog } from '../services/audit-use-cases.ts';

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

/** What is stored for an input, stamped with the time it was recorded and cut to the column sizes. */
export function toNewAuditEvent(input: AuditEventInput, at: Date): NewAuditEvent {
  return {
    type: input.type,
    userId: input.userId ?? null,
    actorId: input.actorId ?? null,
    ipAddress: input.ipAddress === undefined ? null : input.ipAddress.slice(0, 45),
    userAgent: input.userAgent === undefined ? null : input.userAgent.slice(0, USER_AGENT_MAX_LENGTH),
    // A copy, so that the caller changing its object afterwards cannot change the record.
    details: input.details === undefined ? null : { ...input.details },
    createdAt: at,
  };
}

export const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));
