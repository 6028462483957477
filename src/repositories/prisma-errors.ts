import { isDriverAdapterError } from '@prisma/driver-adapter-utils';
import { setTimeout as sleep } from 'node:timers/promises';
import { Prisma } from '../../gen/prisma/client.ts';
import { AppError, ConflictError, DATABASE_UNAVAILABLE, NotFoundError, UnavailableError, ValidationError } from '../domain/errors.ts';

/** What a write told that it collided with a concurrent one (a deadlock victim, a serialization failure) hears. */
const COLLIDED = 'The request collided with a concurrent one; try again';

// 25P03: the server ended a session left idle inside a transaction (database.ts).
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', '57P01', '57P03', '25P03']);

/**
 * MySQL/MariaDB error numbers that mean the server is out of reach, as the MariaDB adapter passes
 * them on (a DriverAdapterError of kind `mysql`, which Prisma reports as P2039): the driver's
 * connection closed, socket error, connect or pool timeout, no pool connection; the server's
 * too many connections, shutdown in progress, gone away or lost, and connection killed.
 */
const MYSQL_CONNECTION_ERRNOS = new Set([45001, 45009, 45012, 45019, 45026, 45027, 45028, 45061, 1040, 1053, 2002, 2003, 2006, 2013, 1927]);

/** Driver adapter errors that say the server is out of reach, whatever the adapter. */
const UNREACHABLE_KINDS = new Set(['DatabaseNotReachable', 'ConnectionClosed', 'SocketTimeout', 'TooManyConnections']);

/**
 * A value the database refused as data, SQLSTATE class 22: a NUL in a string, a value longer than
 * its column, text that is no number or UUID, a negative LIMIT. The request's fault, not the
 * server's; only a caller of the repository's internal API can send one (the public APIs
 * validate first), and it was answered `internal` and logged as a server error (helper 196).
 */
function isDataException(cause: unknown): boolean {
  if (typeof cause !== 'object' || cause === null) return false;
  const kind: unknown = Reflect.get(cause, 'kind');
  if (kind === 'LengthMismatch' || kind === 'ValueOutOfRange' || kind === 'InvalidInputValue') return true;
  if (kind === 'postgres') return isDataExceptionState(Reflect.get(cause, 'code'));
  if (kind === 'mysql') return isDataExceptionState(Reflect.get(cause, 'state'));
  return false;
}

function isDataExceptionState(state: unknown): boolean {
  return typeof state === 'string' && /^22[0-9A-Z]{3}$/.test(state);
}

/** Prisma's own names for data exceptions: too long, not valid, out of range. */
const DATA_EXCEPTION_CODES = new Set(['P2000', 'P2006', 'P2007', 'P2020']);

const invalidValue = () => new ValidationError('A value is not valid for its field');

function isWriteConflict(cause: unknown): boolean {
  return typeof cause === 'object' && cause !== null && Reflect.get(cause, 'kind') === 'TransactionWriteConflict';
}

/**
 * A statement that waited for a lock past the limit (PostgreSQL 55P03 under lock_timeout, MySQL
 * 1205), or that ran past PostgreSQL's statement_timeout (57014) or MariaDB's max_statement_time (1969).
 */
function isLockTimeout(cause: unknown): boolean {
  if (typeof cause !== 'object' || cause === null) return false;
  const kind: unknown = Reflect.get(cause, 'kind');
  const code = String(Reflect.get(cause, 'code'));
  return (kind === 'postgres' && (code === '55P03' || code === '57014')) || (kind === 'mysql' && (code === '1205' || code === '1969'));
}

/**
 * node-postgres's pool found no free connection within its connectionTimeoutMillis, and its client
 * had no answer to its handshake in that time. Both are plain errors without a code, which the
 * adapter passes on as they are.
 */
const POOL_WAIT_TIMEOUT = new Set(['timeout exceeded when trying to connect']);
const CONNECT_TIMEOUT = new Set(['Connection terminated due to connection timeout']);
/**
 * node-postgres's connection closed under a statement without an error of its own (a backend
 * killed, a failover, a proxy restarting): a plain error the adapter passes on, which was a 500
 * (helper 102).
 */
const CONNECTION_LOST = new Set([
  'Connection terminated unexpectedly',
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
]);

/** Whether `error`, or an error it was caused by, has one of `messages`. */
function hasMessage(error: unknown, messages: ReadonlySet<string>): boolean {
  for (let current: unknown = error, depth = 0; current instanceof Error && depth < 5; depth += 1) {
    if (messages.has(current.message)) return true;
    current = current.cause;
  }
  return false;
}

function isMysqlConnectionError(cause: unknown): boolean {
  return typeof cause === 'object' && cause !== null && Reflect.get(cause, 'kind') === 'mysql' && MYSQL_CONNECTION_ERRNOS.has(Number(Reflect.get(cause, 'code')));
}

/**
 * Translates what the database layer throws into domain errors, keeping the original as `cause`:
 * unique violations become conflicts, missing rows not-found, lost connections unavailable.
 */
export function translateDatabaseError(error: unknown): unknown {
  if (error instanceof AppError) return error;
  if (error instanceof Prisma.PrismaClientKnownRequestError) {
    if (error.code === 'P2002') {
      const field = conflictingField(error);
      return new ConflictError(field === undefined ? 'Resource already exists' : `${capitalize(field)} already exists`, {
        ...(field === undefined ? {} : { details: { [field]: 'already exists' } }),
        cause: error,
      });
    }
    if (error.code === 'P2025') return new NotFoundError('User not found');
    // Unreachable, closed, or (P1008) no answer within the bound database.ts sets.
    if (error.code === 'P1001' || error.code === 'P1017' || error.code === 'P1008') return new UnavailableError(DATABASE_UNAVAILABLE, error);
    // No connection came free in time, for a statement (P2024) or a transaction (P2028): the
    // database is overloaded, not the request wrong.
    if (error.code === 'P2024' || error.code === 'P2028') return new UnavailableError('The database is busy; try again', error, 1);
    // A deadlock or write conflict (InnoDB's gap locks make them likelier on MySQL/MariaDB than
    // on PostgreSQL): the transaction was rolled back whole, so trying again is safe.
    const adapterCause: unknown = (error.meta?.['driverAdapterError'] as { cause?: unknown } | undefined)?.cause;
    // Prisma's own statements say P2034; a raw statement (a FOR UPDATE) says P2010 with the
    // adapter's TransactionWriteConflict (PostgreSQL 40P01, MySQL 1213).
    if (error.code === 'P2034' || isWriteConflict(adapterCause)) return new UnavailableError(COLLIDED, error, 1);
    if (DATA_EXCEPTION_CODES.has(error.code) || isDataException(adapterCause)) return invalidValue();
    if (isLockTimeout(adapterCause)) return new UnavailableError('The database is busy; try again', error, 1);
    if (isMysqlConnectionError(adapterCause)) return new UnavailableError(DATABASE_UNAVAILABLE, error);
    // A raw statement (P2010) whose connection was lost or given up on (database.ts), inside a
    // transaction: the same outage as P1001/P1008 (helper 102 had 500s).
    if (typeof adapterCause === 'object' && adapterCause !== null && UNREACHABLE_KINDS.has(String(Reflect.get(adapterCause, 'kind')))) {
      return new UnavailableError(DATABASE_UNAVAILABLE, error);
    }
  }
  // Statements sent to the driver adapter directly (raw-reader.ts) fail with its own errors, which
  // Prisma would have turned into the P1001/P1017 above.
  if (error instanceof Error && isDriverAdapterError(error)) {
    if (UNREACHABLE_KINDS.has(error.cause.kind) || isMysqlConnectionError(error.cause)) return new UnavailableError(DATABASE_UNAVAILABLE, error);
    if (isWriteConflict(error.cause)) return new UnavailableError(COLLIDED, error, 1);
    if (isLockTimeout(error.cause)) return new UnavailableError('The database is busy; try again', error, 1);
    if (isDataException(error.cause)) return invalidValue();
  }
  if (error instanceof Prisma.PrismaClientInitializationError) return new UnavailableError(DATABASE_UNAVAILABLE, error);
  if (hasMessage(error, POOL_WAIT_TIMEOUT)) return new UnavailableError('The database is busy; try again', error, 1);
  if (hasMessage(error, CONNECT_TIMEOUT) || hasMessage(error, CONNECTION_LOST)) return new UnavailableError(DATABASE_UNAVAILABLE, error);
  const code = findCode(error);
  if (code !== undefined && CONNECTION_CODES.has(code)) return new UnavailableError(DATABASE_UNAVAILABLE, error);
  if (isDataExceptionState(code)) return invalidValue();
  return error;
}

/** Attempts at an operation the database rolled back for colliding with a concurrent one. */
const COLLISION_ATTEMPTS = 3;

/**
 * Runs a database call and rethrows its failure translated. A call the database rolled back whole
 * for colliding with a concurrent one is run again, twice at most, after a few random
 * milliseconds: nothing of it was kept, and the other transaction has then gone ahead. InnoDB
 * takes a locking read's locks in the order of the plan it picks, not of the ORDER BY (helper 109:
 * the last-admin guard, planned as an index merge once the table had grown, deadlocked with a
 * DELETE; about 1 in 70 of many administrators' concurrent removals answered 503).
 */
export async function withDatabaseErrors<T>(operation: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await operation();
    } catch (error) {
      const translated = translateDatabaseError(error);
      // Only the database's own error is tried again: one already translated comes from a call
      // nested in this one, which made its own attempts (its retries would multiply).
      if (error instanceof AppError || attempt >= COLLISION_ATTEMPTS || !(translated instanceof UnavailableError && translated.message === COLLIDED)) throw translated;
      await sleep(2 + Math.random() * 8 * attempt);
    }
  }
}

function conflictingField(error: Prisma.PrismaClientKnownRequestError): string | undefined {
  // Depending on the driver adapter, the violated fields arrive as `target` or under
  // `driverAdapterError.cause.constraint.fields`.
  const text = JSON.stringify(error.meta ?? {});
  for (const field of ['username', 'email']) {
    if (text.includes(field)) return field;
  }
  return undefined;
}

function findCode(error: unknown): string | undefined {
  for (let current: unknown = error, depth = 0; current instanceof Object && depth < 5; depth += 1) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

function capitalize(value: string): string {
  return value.charAt(0).toUpperCase() + value.slice(1);
}
