// Opens the application's database: a PostgreSQL server, or a MySQL 8 / MariaDB 10.11+ server,
// when a URL is configured, otherwise an embedded PGlite database kept on disk, so a bare
// `npm start` works without any server. Each comes with its SQL dialect (dialect.ts), the one
// place where the code above it learns how the two SQL families differ.
//
// Besides the Prisma client, a Database carries the driver adapter factory that the schema engine
// (see migrations.ts) uses. That factory wraps the stock adapters because neither runs migration
// scripts the way `prisma migrate deploy` does:
// - @prisma/adapter-pg splits scripts on every ";" (breaking string literals that contain one) and
//   runs the pieces one by one, so a failing migration leaves half of itself behind. The native
//   engine sends the whole script in one simple-protocol round trip, which PostgreSQL runs as one
//   implicit transaction; the wrapper does the same.
// - pglite-prisma-adapter 0.7.2 neither awaits nor reports the script it runs, so a failing
//   migration was recorded in _prisma_migrations as applied. The wrapper awaits it and reports the
//   error to the engine.
// - @prisma/adapter-mariadb runs no scripts at all; the wrapper runs them on a connection of their
//   own that allows multiple statements (migrations.ts applies MySQL's migrations through it).
// - pglite-prisma-adapter's shadow databases are in-memory PGlite instances that are never closed,
//   and an open instance keeps the process alive; the wrapper closes them when the engine disposes
//   of the connection.
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
//
// Each kind's driver, adapter and client are imported when a database of that kind is opened:
// loading the two others cost a PostgreSQL process about a tenth of a second at every start.
import type { PGlite } from '@electric-sql/pglite';
import type { PrismaPg } from '@prisma/adapter-pg';
import type { PoolClient } from 'pg';
import type { Connection as MariadbConnection, Pool } from 'mariadb';
import { DriverAdapterError } from '@prisma/driver-adapter-utils';
import type { SqlDriverAdapter, SqlDriverAdapterFactory, SqlMigrationAwareDriverAdapterFactory } from '@prisma/driver-adapter-utils';
import { PrismaClient } from '../../../gen/prisma/client.ts';
import { mysqlDialect, postgresDialect, type SqlDialect } from './dialect.ts';
import { createRawReader, StatementNames, type Placeholders, type RawReader } from './raw-reader.ts';
import { lockDataDir } from './data-dir-lock.ts';

export interface DatabaseOptions {
  /**
   * A postgresql:// URL, where an optional `?schema=NAME` selects the schema (default `public`);
   * or a mysql:// or mariadb:// URL, whose path names the database.
   */
  databaseUrl?: string;
  /** Where the embedded PGlite database lives when no URL is given; `memory://` keeps it in memory. */
  dataDir: string;
  /**
   * How long a statement waits for a row or table lock before it fails as busy (PostgreSQL's
   * lock_timeout; MySQL's innodb_lock_wait_timeout and lock_wait_timeout, in whole seconds). Unbounded, one lock held
   * elsewhere kept every request that needed it waiting, each holding a pooled connection, for as
   * long as it was held: an interactive transaction's own timeout does not cancel a statement
   * that waits. PGlite has one connection and nobody else to wait for.
   */
  lockTimeoutMs?: number;
  /**
   * How long a statement may take, lock waits included, before the request fails (PostgreSQL's
   * statement_timeout, MariaDB's max_statement_time, on the application's connections; not the
   * migrations'; MySQL has only the client's bound that follows). A server that stops
   * answering altogether (frozen, partitioned, its disk stalled) is given a second more; the
   * connection is then closed, not returned to the pool, and a wait for a pooled connection is
   * bounded by the same time. Unbounded, each request waited for as long as the server did, and
   * every later one queued behind the pool's connections (found by an attacking helper).
   */
  queryTimeoutMs?: number;
}

export type DatabaseKind = 'postgresql' | 'pglite' | 'mysql';

export interface Database {
  readonly prisma: PrismaClient;
  /** Migration-aware adapter factory for the schema engine, with the script fixes described above. */
  readonly adapterFactory: SqlMigrationAwareDriverAdapterFactory;
  readonly kind: DatabaseKind;
  /** How this database's SQL differs, for the repositories' few statements of their own. */
  readonly dialect: SqlDialect;
  /** The PostgreSQL schema, or the MySQL database, holding the application's tables. */
  readonly schema: string;
  /**
   * Sends one read statement of the repositories' own to the driver adapter the client holds,
   * past the client's query engine, and decodes its rows as `$queryRaw` would (raw-reader.ts).
   * It fails with the adapter's errors, which translateDatabaseError knows.
   */
  readonly readRows: RawReader;
  /** How many queries this process has sent: shows what the cache saves, in tests and metrics. */
  queryCount(): number;
  /**
   * Connection pool use, for metrics: absent for PGlite, which has one connection and no pool;
   * undefined until the pool exists.
   */
  poolUse?: (() => { total: number; idle: number; waiting: number; max: number } | undefined) | undefined;
  close(): Promise<void>;
}

const DEFAULT_SCHEMA = 'public';

/**
 * A Prisma client whose queries are counted, and a reader that sends statements to the same
 * adapter (so the same pool) the client connects. Query events are emitted, not printed. Prisma
 * types a client with log events as a different generic instance, which the repositories need
 * not know about, hence the casts.
 */
function createCountingClient(
  factory: SqlDriverAdapterFactory,
  placeholders: Placeholders,
  names: StatementNames | undefined,
  Client: new (options: { adapter: SqlDriverAdapterFactory; log: { emit: 'event'; level: 'query' }[] }) => object = PrismaClient,
) {
  let count = 0;
  // The adapter the client connected last: Prisma connects its factory lazily, and again after
  // a $disconnect.
  let connected: SqlDriverAdapter | undefined;
  const capturing: SqlDriverAdapterFactory = {
    provider: factory.provider,
    adapterName: factory.adapterName,
    connect: async () => {
      connected = await factory.connect();
      return connected;
    },
  };
  const client = new Client({ adapter: capturing, log: [{ emit: 'event', level: 'query' }] });
  (client as unknown as { $on(event: 'query', listener: () => void): void }).$on('query', () => {
    count += 1;
  });
  const prisma = client as unknown as PrismaClient;
  const adapter = async (): Promise<SqlDriverAdapter> => {
    if (connected === undefined) await prisma.$connect();
    if (connected === undefined) throw new Error('The Prisma client connected no driver adapter');
    return connected;
  };
  const readRows = createRawReader(
    adapter,
    placeholders,
    () => {
      count += 1;
    },
    names,
  );
  return { prisma, readRows, queryCount: () => count };
}
const MEMORY_PREFIX = 'memory://';

// Schema names end up in a startup parameter and in generated SQL, so only plain identifiers are
// accepted rather than trying to quote arbitrary text correctly in both places.
const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * Opens PostgreSQL or MySQL/MariaDB, by the scheme of `databaseUrl`, when it is set; otherwise the
 * embedded PGlite database in `dataDir`.
 */
export async function createDatabase(options: DatabaseOptions): Promise<Database> {
  if (options.databaseUrl === undefined) return openPGlite(options.dataDir);
  const url = parseDatabaseUrl(options.databaseUrl);
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  const queryTimeoutMs = options.queryTimeoutMs ?? Math.max(DEFAULT_QUERY_TIMEOUT_MS, lockTimeoutMs);
  return url.protocol === 'mysql:' || url.protocol === 'mariadb:' ? await openMysql(url, lockTimeoutMs, queryTimeoutMs) : await openPostgres(url, lockTimeoutMs, queryTimeoutMs);
}

const PROTOCOLS = ['postgresql:', 'postgres:', 'mysql:', 'mariadb:'];

/** DATABASE_LOCK_TIMEOUT_MS's default: Prisma's own timeout for an interactive transaction. */
const DEFAULT_LOCK_TIMEOUT_MS = 5_000;
/** DATABASE_QUERY_TIMEOUT_MS's default, unless the lock timeout is longer. */
const DEFAULT_QUERY_TIMEOUT_MS = 5_000;
/** How much longer than its statement_timeout a statement is given before its server is taken for gone. */
const UNANSWERED_MARGIN_MS = 1_000;
/** Prisma's own bound on an interactive transaction, which rolls it back while the app can still say so. */
const PRISMA_TRANSACTION_TIMEOUT_MS = 5_000;

/**
 * How long the server keeps a session that is inside a transaction and sends nothing: twice a
 * statement's bound, and never under Prisma's own transaction timeout. A connection the app gave
 * up on (see boundStatements) whose close never reached the server (a partition, a lost NAT
 * entry) left its transaction open there, with its row locks, for as long as the server kept idle
 * sessions: MariaDB's wait_timeout is 8 hours, and every later login of that user waited on the
 * lock and failed (helper 104).
 */
function idleInTransactionMs(queryTimeoutMs: number): number {
  return Math.max(2 * queryTimeoutMs, PRISMA_TRANSACTION_TIMEOUT_MS);
}

function parseDatabaseUrl(databaseUrl: string): URL {
  let url: URL;
  try {
    url = new URL(databaseUrl);
  } catch {
    throw new Error('Invalid database URL; expected postgresql://, mysql:// or mariadb://');
  }
  if (!PROTOCOLS.includes(url.protocol)) {
    throw new Error(`Unsupported database URL protocol "${url.protocol}"; expected postgresql://, mysql:// or mariadb://`);
  }
  return url;
}

async function openPostgres(url: URL, lockTimeoutMs: number, queryTimeoutMs: number): Promise<Database> {
  const schema = url.searchParams.get('schema') ?? DEFAULT_SCHEMA;
  if (!SCHEMA_NAME.test(schema)) {
    throw new Error(`Invalid schema name "${schema}" in the database URL`);
  }
  // node-postgres does not know Prisma's `schema` parameter. PrismaPg's schema option qualifies
  // the client's queries, but migration scripts use unqualified names, so every connection also
  // gets the schema as its search_path, as the native engine does (public included, rather than
  // PostgreSQL's default "$user", public). Options given in the URL win over the pool config in
  // node-postgres, hence the search_path goes into the URL next to any options already there.
  url.searchParams.delete('schema');
  const existing = url.searchParams.get('options');
  // A later -c wins: the operator's options may set their own lock_timeout, never the search_path.
  const lockTimeout = `-c lock_timeout=${lockTimeoutMs}`;
  const searchPath = `-c search_path="${schema}"`;
  const operators = existing === null ? '' : `${existing} `;
  // The schema engine's connections: a lock waited for at most lockTimeoutMs (a start that gives
  // up leaves nothing to resolve by hand: the next one applies the migration, see
  // abandonAttempts), no statement bound, and a statement whose client has gone is given up
  // within a second (PostgreSQL 14 or later): a start killed while its migration waited left a
  // backend that ran the migration once the lock was gone, after its history could no longer
  // say so (helper 164).
  url.searchParams.set('options', `-c client_connection_check_interval=1000 ${lockTimeout} ${operators}${searchPath}`);

  // Each connect() of PrismaPg opens its own pool, so the client and the schema engine never share
  // connections (and never share the engine's session-level advisory lock). Only the client's are
  // bounded: a migration may take as long as it takes.
  const { PrismaPg } = await import('@prisma/adapter-pg');
  const names = new StatementNames();
  const adapterOptions = { ...(schema === DEFAULT_SCHEMA ? {} : { schema }), statementNameGenerator: names.nameOf };
  const factory = new PrismaPg({ connectionString: url.toString() }, adapterOptions);
  const clientUrl = new URL(url);
  clientUrl.searchParams.set(
    'options',
    `-c statement_timeout=${queryTimeoutMs} -c idle_in_transaction_session_timeout=${idleInTransactionMs(queryTimeoutMs)} ${lockTimeout} ${operators}${searchPath}`,
  );
  const clientFactory = new PrismaPg({ connectionString: clientUrl.toString(), connectionTimeoutMillis: queryTimeoutMs }, adapterOptions);
  // The client's pool, as its adapter reports it once connected (the schema engine's are its own).
  let pool: { totalCount: number; idleCount: number; waitingCount: number; options: { max?: number } } | undefined;
  const { prisma, readRows, queryCount } = createCountingClient(
    {
      provider: clientFactory.provider,
      adapterName: clientFactory.adapterName,
      connect: async () => {
        const adapter = await clientFactory.connect();
        const connected = adapter.underlyingDriver();
        connected.on('connect', (client) => {
          boundStatements(client, queryTimeoutMs + UNANSWERED_MARGIN_MS);
        });
        pool = connected;
        return adapter;
      },
    },
    'numbered',
    names,
  );

  const runOnPool = (adapter: Awaited<ReturnType<PrismaPg['connect']>>) => async (script: string) => {
    try {
      await adapter.underlyingDriver().query(script);
    } catch (error) {
      throw toDriverAdapterError(error);
    }
  };
  const adapterFactory: SqlMigrationAwareDriverAdapterFactory = {
    provider: factory.provider,
    adapterName: factory.adapterName,
    connect: async () => {
      const adapter = await factory.connect();
      return withScriptRunner(adapter, runOnPool(adapter), () => adapter.dispose());
    },
    connectToShadowDb: async () => {
      const adapter = await factory.connectToShadowDb();
      return withScriptRunner(adapter, runOnPool(adapter), () => adapter.dispose());
    },
  };

  return {
    prisma,
    adapterFactory,
    kind: 'postgresql',
    dialect: postgresDialect,
    schema,
    readRows,
    queryCount,
    // node-postgres's default bound is 10 connections.
    poolUse: () => (pool === undefined ? undefined : { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount, max: pool.options.max ?? 10 }),
    close: async () => {
      await prisma.$disconnect();
    },
  };
}

/**
 * Closes a pooled connection whose statement has had no answer within `ms`, failing the statement
 * (and any queued behind it) as a socket timeout, which the adapter reports as SocketTimeout. A
 * closed connection leaves the pool; one that waited for a frozen server would otherwise be
 * handed to the next request. node-postgres's own query_timeout fails the statement but keeps the
 * connection, still waiting, in use.
 */
function boundStatements(client: PoolClient, ms: number): void {
  const send = client.query.bind(client) as (...args: unknown[]) => unknown;
  const giveUp = () => {
    const error = Object.assign(new Error(`The database did not answer within ${ms} ms`), { code: 'ETIMEDOUT', syscall: 'read', errno: -110 });
    client.connection.stream.destroy(error);
  };
  Reflect.set(client, 'query', (...args: unknown[]) => {
    const timer = setTimeout(giveUp, ms);
    const last = args.length - 1;
    const callback = args[last];
    // The pool's query() passes a callback; the adapter's transactions await a promise.
    if (typeof callback === 'function') {
      args[last] = (...results: unknown[]) => {
        clearTimeout(timer);
        return Reflect.apply(callback, undefined, results) as unknown;
      };
    }
    let sent: unknown;
    try {
      sent = send(...args);
    } catch (error) {
      clearTimeout(timer);
      throw error;
    }
    if (typeof callback === 'function') return sent;
    if (sent instanceof Promise) return sent.finally(() => clearTimeout(timer));
    clearTimeout(timer);
    return sent;
  });
}

// MySQL database names are identifiers too; the same plain ones as PostgreSQL's schema names.
const MYSQL_DATABASE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

async function openMysql(url: URL, lockTimeoutMs: number, queryTimeoutMs: number): Promise<Database> {
  const database = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (database === '') {
    throw new Error('The MySQL database URL names no database; expected mysql://user@host:3306/DATABASE');
  }
  if (!MYSQL_DATABASE_NAME.test(database)) {
    throw new Error(`Invalid database name "${database}" in the database URL`);
  }
  // The mariadb driver speaks MySQL's protocol too; it only knows the mariadb:// scheme.
  url.protocol = 'mariadb:';
  // MySQL 8's default authentication (caching_sha2_password) without TLS needs the server's RSA
  // key, which the driver only asks for when allowed. Times are UTC on the wire either way.
  if (!url.searchParams.has('allowPublicKeyRetrieval')) url.searchParams.set('allowPublicKeyRetrieval', 'true');
  if (!url.searchParams.has('timezone')) url.searchParams.set('timezone', 'Z');
  // Every new pooled connection runs initSql; one given in the URL is the operator's, and stays.
  // Without spaces: URLSearchParams (ours, then the adapter's) writes them as '+', which the
  // driver does not decode.
  // The application's connections (not the migrations') also get MariaDB's statement and
  // idle-in-transaction bounds, in seconds, as PostgreSQL's get statement_timeout and
  // idle_in_transaction_session_timeout: an executable comment that MariaDB runs and MySQL, which
  // has neither variable, skips. An operator's own initSql replaces all of it (README).
  const clientUrl = new URL(url);
  if (!url.searchParams.has('initSql')) {
    // Row locks (InnoDB's) and metadata locks, which DDL takes and DML queues behind: unbounded
    // (MariaDB's default is a day), a migration's ALTER behind a long report waited for ever, and
    // every replica's logins queued behind the ALTER (helper 219).
    const seconds = Math.ceil(lockTimeoutMs / 1000);
    const lockWait = `SET@@SESSION.innodb_lock_wait_timeout=${seconds},@@SESSION.lock_wait_timeout=${seconds}`;
    url.searchParams.set('initSql', lockWait);
    // Each variable in the comment of the version that brought it (helper 105: one comment of
    // 10.3 dropped 10.1's statement bound on 10.1 and 10.2).
    const statementBound = `/*M!100100,@@SESSION.max_statement_time=${queryTimeoutMs / 1000}*/`;
    const idleBound = `/*M!100300,@@SESSION.idle_transaction_timeout=${Math.ceil(idleInTransactionMs(queryTimeoutMs) / 1000)}*/`;
    clientUrl.searchParams.set('initSql', `${lockWait}${statementBound}${idleBound}`);
  }
  // A wait for a pooled connection is bounded as PostgreSQL's is (the driver's default is 10 s).
  if (!clientUrl.searchParams.has('acquireTimeout')) clientUrl.searchParams.set('acquireTimeout', String(queryTimeoutMs));
  // The driver's default, unless the URL sets its own.
  const connectionLimit = Number(clientUrl.searchParams.get('connectionLimit') ?? 10);
  // What the adapter sets on pools of its own; this one is ours (below).
  if (!clientUrl.searchParams.has('prepareCacheLength')) clientUrl.searchParams.set('prepareCacheLength', '0');
  const [{ PrismaMariaDb }, { default: mariadb }, { PrismaClient: MysqlPrismaClient }] = await Promise.all([
    import('@prisma/adapter-mariadb'),
    import('mariadb'),
    import('../../../gen/prisma-mysql/client.ts'),
  ]);
  // The migrations' connections: each connect() is a pool of its own (the deploy lock's, the
  // history's), used one statement at a time, where the driver's default pool opened ten apiece;
  // test files starting side by side then ran MariaDB out of connections.
  if (!url.searchParams.has('connectionLimit')) url.searchParams.set('connectionLimit', '1');
  const factory = new PrismaMariaDb(url.toString());
  // The client's pool is made here, so that each connection is bounded from its first statement.
  let pool: Pool | undefined;
  const clientFactory: SqlDriverAdapterFactory = {
    provider: factory.provider,
    adapterName: factory.adapterName,
    connect: () => {
      pool = mariadb.createPool(clientUrl.toString());
      pool.on('connection', (connection) => {
        boundMysqlStatements(connection as unknown as MysqlBaseConnection, queryTimeoutMs + UNANSWERED_MARGIN_MS);
      });
      // A failed attempt to grow the pool is retried by the pool and reported to the request
      // that waited (503); unheard, the pool's 'error' event would end the process.
      (pool as unknown as NodeJS.EventEmitter).on('error', () => undefined);
      return new PrismaMariaDb(pool, { disposeExternalPool: true }).connect();
    },
  };
  const { prisma, readRows, queryCount } = createCountingClient(clientFactory, 'question', undefined, MysqlPrismaClient);

  const scriptUrl = new URL(url);
  scriptUrl.searchParams.set('multipleStatements', 'true');
  const adapterFactory: SqlMigrationAwareDriverAdapterFactory = {
    provider: factory.provider,
    adapterName: factory.adapterName,
    connect: async () => {
      const adapter = await factory.connect();
      // Scripts (a migration's statements, one after the other) share one session until one fails
      // or the adapter is disposed: a connection per statement opened a dozen per start, and
      // test files starting side by side ran MariaDB out of connections.
      let session: Promise<MariadbConnection> | undefined;
      const endSession = async () => {
        const ending = session;
        session = undefined;
        await ending?.then((connection) => connection.end()).catch(() => undefined);
      };
      const runScript = async (script: string) => {
        try {
          session ??= mariadb.createConnection(scriptUrl.toString());
          await (await session).query(script);
        } catch (error) {
          // A transaction the script left open ends with its session.
          await endSession();
          throw toMysqlAdapterError(error);
        }
      };
      return withScriptRunner(adapter, runScript, async () => {
        await endSession();
        await adapter.dispose();
      });
    },
    connectToShadowDb: () => {
      // Only the schema engine asks for one, and it never runs on MySQL (see migrations.ts).
      throw new Error('MySQL migrations are applied without a shadow database: the WebAssembly schema engine has no MySQL connector');
    },
  };

  return {
    prisma,
    adapterFactory,
    kind: 'mysql',
    dialect: mysqlDialect,
    schema: database,
    readRows,
    queryCount,
    // For readiness, as PostgreSQL's: a pool busy to the last connection is not a database down
    // (without it, /ready failed on MariaDB while every connection waited on one row: helper 104).
    poolUse: () => (pool === undefined ? undefined : { total: pool.totalConnections(), idle: pool.idleConnections(), waiting: pool.taskQueueSize(), max: connectionLimit }),
    close: async () => {
      await prisma.$disconnect();
    },
  };
}

/** How the mariadb driver's connection (the pool's, not its promise wrapper) takes a command. */
type MysqlCommand = (command: unknown, resolve: (result: unknown) => void, reject: (error: unknown) => void) => void;

/** What boundMysqlStatements needs of that connection. */
interface MysqlBaseConnection {
  query: MysqlCommand;
  prepareExecute: MysqlCommand;
  changeTransaction: MysqlCommand;
  readonly socket?: { destroy(error: Error): void } | undefined;
}

/** The mariadb driver's own number for a socket that timed out, which prisma-errors answers 503. */
const MYSQL_SOCKET_TIMEOUT = 45026;

/**
 * As boundStatements, for the mariadb driver: a statement with no answer within `ms` closes its
 * connection with a socket error, which fails it (and anything queued behind it) and takes the
 * connection out of the pool. The driver's own socketTimeout counts idle time too, so it would
 * close every pooled connection left idle that long; its destroy() first opens a connection to
 * KILL the statement, which waits for the same frozen server.
 */
function boundMysqlStatements(connection: MysqlBaseConnection, ms: number): void {
  const giveUp = () => {
    const message = `The database did not answer within ${ms} ms`;
    connection.socket?.destroy(Object.assign(new Error(message), { errno: MYSQL_SOCKET_TIMEOUT, code: 'ER_SOCKET_TIMEOUT', sqlMessage: message, sqlState: 'HY000' }));
  };
  // changeTransaction: the ROLLBACK the pool sends itself when a connection comes back still
  // inside a transaction (helper 104, from the driver's source).
  for (const method of ['query', 'prepareExecute', 'changeTransaction'] as const) {
    const send = connection[method].bind(connection);
    const bounded: MysqlCommand = (command, resolve, reject) => {
      const timer = setTimeout(giveUp, ms);
      send(
        command,
        (result) => {
          clearTimeout(timer);
          resolve(result);
        },
        (error) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    };
    Reflect.set(connection, method, bounded);
  }
}

/** As toDriverAdapterError, for the mariadb driver's errors (errno, sqlState, sqlMessage). */
function toMysqlAdapterError(error: unknown): unknown {
  if (!(error instanceof Error) || !('errno' in error) || typeof error.errno !== 'number') return error;
  const sqlState: unknown = Reflect.get(error, 'sqlState');
  const sqlMessage: unknown = Reflect.get(error, 'sqlMessage');
  return new DriverAdapterError({
    kind: 'mysql',
    code: error.errno,
    message: typeof sqlMessage === 'string' ? sqlMessage : error.message,
    state: typeof sqlState === 'string' ? sqlState : 'HY000',
  });
}

async function openPGlite(dataDir: string): Promise<Database> {
  let location = dataDir;
  let unlock: () => Promise<void> = () => Promise.resolve();
  if (!dataDir.startsWith(MEMORY_PREFIX)) {
    location = resolve(dataDir);
    await mkdir(location, { recursive: true });
    // Taken over while this process was stopped or stalled past the lock's heartbeat: another
    // server now writes there, and this one stops at once rather than write beside it.
    unlock = await lockDataDir(location, undefined, () => {
      process.stderr.write(
        `DATA_DIR ${location}: another server took the embedded database's lock over while this one was stopped or stalled; exiting so that one server writes there\n`,
      );
      process.exit(1);
    });
  }
  const [{ PGlite }, { PrismaPGlite }] = await Promise.all([import('@electric-sql/pglite'), import('pglite-prisma-adapter')]);
  let pglite: PGlite;
  try {
    pglite = await PGlite.create(location);
  } catch (error) {
    await unlock();
    // PGlite throws Emscripten's errors, which are not Errors: start-up said "[object Object]".
    const detail = error instanceof Error ? error.message : JSON.stringify(error);
    throw new Error(`cannot open the embedded database in ${location} (is it a writable PGlite data directory?): ${detail}`, { cause: error });
  }
  takeTurns(pglite);
  const { prisma, readRows, queryCount } = createCountingClient(new PrismaPGlite(pglite), 'numbered', undefined);
  const adapterFactory = pgliteAdapterFactory(pglite, async () => {
    const shadow = await PGlite.create(MEMORY_PREFIX);
    return { pglite: shadow, release: () => shadow.close() };
  });

  return {
    prisma,
    adapterFactory,
    kind: 'pglite',
    dialect: postgresDialect,
    schema: DEFAULT_SCHEMA,
    readRows,
    queryCount,
    close: async () => {
      await prisma.$disconnect();
      await pglite.close();
      await unlock();
    },
  };
}

/**
 * PGlite runs each statement on this thread, and starts the next one waiting for its lock as soon
 * as one ends: every statement queued meanwhile then ran in the same turn of the event loop, and
 * nothing else was read or answered until all were done. Eight listings deep into 100 000 users
 * (70 ms each) held every answer, `/health` included, for 0.5–2 s (helper 149). Statements (and
 * transactions, whole) now take turns here, each in a turn of the event loop of its own, so that
 * what arrived meanwhile is served between two of them. A transaction's own statements go through
 * its `tx`, not through these.
 */
function takeTurns(pglite: PGlite): void {
  let last: Promise<unknown> = Promise.resolve();
  const inTurn = <T>(statement: () => Promise<T>): Promise<T> => {
    const turn = last.then(() => new Promise<void>((resolve) => setImmediate(resolve))).then(statement);
    last = turn.catch(() => undefined);
    return turn;
  };
  const query = pglite.query.bind(pglite);
  const exec = pglite.exec.bind(pglite);
  const transaction = pglite.transaction.bind(pglite);
  pglite.query = ((...args: Parameters<typeof query>) => inTurn(() => query(...args))) as typeof pglite.query;
  pglite.exec = (...args: Parameters<typeof exec>) => inTurn(() => exec(...args));
  pglite.transaction = ((...args: Parameters<typeof transaction>) => inTurn(() => transaction(...args))) as typeof pglite.transaction;
}

export interface ScratchAdapterFactory {
  readonly adapterFactory: SqlMigrationAwareDriverAdapterFactory;
  close(): Promise<void>;
}

/** Opens a throwaway in-memory PGlite database for the schema engine to diff on. */
export async function createScratchAdapterFactory(): Promise<ScratchAdapterFactory> {
  // Starting a PGlite instance takes seconds, so the fresh instance doubles as the first shadow
  // database: diffing only writes to the shadow, and the instance is thrown away afterwards.
  // Should the engine ask for another shadow database, that one must be empty, hence new.
  const { PGlite } = await import('@electric-sql/pglite');
  const instances: PGlite[] = [];
  const open = async () => {
    const instance = await PGlite.create(MEMORY_PREFIX);
    instances.push(instance);
    return instance;
  };
  const main = await open();
  let mainIsUnused = true;
  const adapterFactory = pgliteAdapterFactory(main, async () => {
    const shadow = mainIsUnused ? main : await open();
    mainIsUnused = false;
    return {
      pglite: shadow,
      release: async () => {
        // Nothing to release: the shadow database is closed with the main one.
      },
    };
  });
  return {
    adapterFactory,
    close: async () => {
      await Promise.all(instances.map((instance) => instance.close()));
    },
  };
}

interface Shadow {
  pglite: PGlite;
  release(): Promise<void>;
}

function pgliteAdapterFactory(pglite: PGlite, openShadow: () => Promise<Shadow>): SqlMigrationAwareDriverAdapterFactory {
  return {
    provider: 'postgres',
    adapterName: 'pglite-prisma-adapter',
    connect: async () => {
      const { PrismaPGlite } = await import('pglite-prisma-adapter');
      const adapter = await new PrismaPGlite(pglite).connect();
      // The instance belongs to whoever created it and is closed there, not by the engine.
      return withScriptRunner(adapter, runOnPGlite(pglite), async () => {
        // Nothing to dispose of here (see above).
      });
    },
    connectToShadowDb: async () => {
      const shadow = await openShadow();
      const { PrismaPGlite } = await import('pglite-prisma-adapter');
      const adapter = await new PrismaPGlite(shadow.pglite).connect();
      return withScriptRunner(adapter, runOnPGlite(shadow.pglite), () => shadow.release());
    },
  };
}

function runOnPGlite(pglite: PGlite): (script: string) => Promise<void> {
  return async (script) => {
    try {
      await pglite.exec(script);
    } catch (error) {
      throw toDriverAdapterError(error);
    }
  };
}

/** Delegates to `adapter`, except for running scripts and releasing resources. */
function withScriptRunner(adapter: SqlDriverAdapter, executeScript: (script: string) => Promise<void>, dispose: () => Promise<void>): SqlDriverAdapter {
  const wrapped: SqlDriverAdapter = {
    provider: adapter.provider,
    adapterName: adapter.adapterName,
    queryRaw: (query) => adapter.queryRaw(query),
    executeRaw: (query) => adapter.executeRaw(query),
    startTransaction: (isolationLevel) => adapter.startTransaction(isolationLevel),
    executeScript,
    dispose,
  };
  const getConnectionInfo = adapter.getConnectionInfo?.bind(adapter);
  if (getConnectionInfo !== undefined) wrapped.getConnectionInfo = getConnectionInfo;
  return wrapped;
}

// The engine turns a DriverAdapterError into a proper database error (SQLSTATE, message, detail);
// any other exception would reach it as an opaque JavaScript error.
function toDriverAdapterError(error: unknown): unknown {
  if (!(error instanceof Error) || !('code' in error) || typeof error.code !== 'string') {
    return error;
  }
  const text = (key: string): string | undefined => {
    const value: unknown = Reflect.get(error, key);
    return typeof value === 'string' ? value : undefined;
  };
  return new DriverAdapterError({
    kind: 'postgres',
    code: error.code,
    severity: text('severity') ?? 'ERROR',
    message: error.message,
    detail: text('detail'),
    column: text('column'),
    hint: text('hint'),
  });
}
