import { Prisma, type AuditEvent, type AuditEventType, type PrismaClient } from '../../gen/prisma/client.ts';
import type { WorkGate } from '../infrastructure/work-gate.ts';
import { admitList } from './list-admission.ts';
import { withDatabaseErrors } from './prisma-errors.ts';
import { auditRow } from './write-options.ts';
import { recheckLister } from './user-repository.ts';
import type { ListOptions } from './write-options.ts';

/** Event-specific facts: a flat object, so it reads the same in SQL, REST and proto. */
export type AuditDetails = Record<string, string | number | boolean>;

/** An event to store. `createdAt` is when it happened, which may be a little before it is written. */
export interface NewAuditEvent {
  type: AuditEventType;
  userId: number | null;
  actorId: number | null;
  ipAddress: string | null;
  userAgent: string | null;
  details: AuditDetails | null;
  createdAt: Date;
  /**
   * Chosen when the event is recorded (a UUID): the same event written again, by a retry of a
   * write whose answer was lost, is not stored twice. Null only for events from elsewhere that
   * have none.
   */
  eventKey: string | null;
}

/** Which page of the audit log to read, and which events. */
export interface AuditFilter {
  page: number;
  perPage: number;
  userId?: number | undefined;
  type?: AuditEventType | undefined;
}

/**
 * Persistence of the audit log. Rows are only added, and deleted once older than the retention
 * period (AUDIT_RETENTION_DAYS, by the purge job); they outlive the users they name.
 */
export interface AuditRepository {
  /** Stores the events in one statement, but none whose key is stored already; returns how many were stored. */
  createMany(events: NewAuditEvent[]): Promise<number>;
  /** A page of events, newest first, and how many match in all. With `options.actingAs`, only while that caller may still. */
  list(filter: AuditFilter, options?: ListOptions): Promise<{ events: AuditEvent[]; total: number }>;
  /** Deletes the events recorded before `cutoff`, at most `limit` of them (all without); returns how many went. */
  purgeBefore(cutoff: Date, limit?: number): Promise<number>;
}

/**
 * Events deleted per statement by the purge (and per internal call, across the layers): a year's backlog on a busy deployment is millions of
 * rows, and one DELETE of all of them would hold its locks and grow the transaction log until it
 * ended, while events go on being written.
 */
export const AUDIT_PURGE_BATCH = 5_000;

export class PrismaAuditRepository implements AuditRepository {
  readonly #db: PrismaClient;
  readonly #lists: WorkGate | undefined;

  /** `lists`: the admission gate of this process's listings (see admitList). */
  constructor(db: PrismaClient, lists?: WorkGate) {
    this.#db = db;
    this.#lists = lists;
  }

  async createMany(events: NewAuditEvent[]): Promise<number> {
    if (events.length === 0) return 0;
    const data = events.map(auditRow);
    // One event (each login and logout records one through the job queue) is an insert of one
    // row: Prisma caches the plan of a create by its shape, but compiles a createMany afresh at
    // every call (0.4 ms of the main thread per login, a tenth of what the repository process
    // spends beside the hash). Its key already stored is the same event, written by an attempt
    // whose answer was lost (the event key is the table's only unique column besides the id).
    const [single] = data;
    if (data.length === 1 && single !== undefined) {
      return withDatabaseErrors(() =>
        this.#db.auditEvent.create({ data: single, select: { id: true } }).then(
          () => 1,
          (error: unknown) => {
            if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2002' && single.eventKey != null) return 0;
            throw error;
          },
        ),
      );
    }
    const { count } = await withDatabaseErrors(() => this.#db.auditEvent.createMany({ data, skipDuplicates: true }));
    return count;
  }

  async list(filter: AuditFilter, options: ListOptions = {}): Promise<{ events: AuditEvent[]; total: number }> {
    const { actingAs } = options;
    const where: Prisma.AuditEventWhereInput = {
      ...(filter.userId === undefined ? {} : { userId: filter.userId }),
      ...(filter.type === undefined ? {} : { type: filter.type }),
    };
    const [events, total] = await withDatabaseErrors(() =>
      admitList(
        this.#lists,
        async () => {
          // Authorized again as it starts, however long it waited its turn (see ListOptions).
          if (actingAs !== undefined) await recheckLister(this.#db, actingAs);
          return this.#db.$transaction([
            this.#db.auditEvent.findMany({
              where,
              // The id breaks ties between events of the same millisecond, so pages never overlap.
              orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
              skip: (filter.page - 1) * filter.perPage,
              take: filter.perPage,
            }),
            this.#db.auditEvent.count({ where }),
          ]);
        },
        actingAs?.userId,
      ),
    );
    return { events, total };
  }

  async purgeBefore(cutoff: Date, limit = Number.POSITIVE_INFINITY): Promise<number> {
    let deleted = 0;
    while (deleted < limit) {
      const take = Math.min(AUDIT_PURGE_BATCH, limit - deleted);
      // Ids first, then a DELETE by them: the same two statements on PostgreSQL and MySQL, each
      // short (`created_at` is indexed, and so is the primary key).
      const batch = await withDatabaseErrors(() => this.#db.auditEvent.findMany({ where: { createdAt: { lt: cutoff } }, select: { id: true }, take }));
      if (batch.length === 0) return deleted;
      const { count } = await withDatabaseErrors(() => this.#db.auditEvent.deleteMany({ where: { id: { in: batch.map((row) => row.id) } } }));
      deleted += count;
      if (batch.length < take) return deleted;
    }
    return deleted;
  }
}
