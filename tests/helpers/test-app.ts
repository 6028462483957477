// Builds the real application against a fresh PostgreSQL schema (or MySQL database, when
// TEST_DATABASE_URL is a mysql:// URL), for tests through the API.
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import type pg from 'pg';
import supertest from 'supertest';
import { createApplication, type Application, type MonolithApplication } from '../../src/app.ts';
import { loadConfig, type Environment } from '../../src/config.ts';
import { createLogger, type Logger } from '../../src/infrastructure/logger.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { TOPOLOGIES, type TopologyName } from '../../scripts/topology.ts';
import { layersOf, parseTopologyName, TOPOLOGY, type DeploymentLayer } from '../../src/topology.ts';
import { PrismaAuditRepository } from '../../src/repositories/audit-repository.ts';
import { PrismaTokenRepository } from '../../src/repositories/token-repository.ts';
import { PrismaUserRepository } from '../../src/repositories/user-repository.ts';
import { isMysqlUrl, openTestDatabase, type TestDatabase } from './test-database.ts';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';

export const ADMIN = { username: 'root_admin', email: 'admin@arcana.test', password: 'Admin@12345' };

/** Settings every test app shares: fast bcrypt, no throttling, responses checked against openapi.yaml. */
export const TEST_ENV: Environment = {
  NODE_ENV: 'test',
  LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
  BCRYPT_ROUNDS: '4',
  RATE_LIMIT_MAX: '1000000',
  OPENAPI_VALIDATE_RESPONSES: 'true',
  JWT_SECRET: 'test-secret-that-is-long-enough-for-hs256-0123456789',
  // Split topologies run with their internal APIs closed, as production requires.
  INTERNAL_API_SECRET: 'test-internal-secret-shared-by-every-layer',
  ADMIN_USERNAME: ADMIN.username,
  ADMIN_EMAIL: ADMIN.email,
  ADMIN_PASSWORD: ADMIN.password,
};

/**
 * How the API suites' app is deployed: `monolithic` (the default), or split into layer processes
 * that talk over loopback, `layered-http`, `layered-grpc`, `microservices-http` or
 * `microservices-grpc`. Each layer is built by the same composition root as `node src/main.js`
 * builds it, with its own configuration, database connection and caches, and served on its own
 * port; they share this test process only to start fast (tests/integration/topology-processes
 * runs them as real processes).
 */
export const TEST_TOPOLOGY = parseTopology(process.env.TEST_TOPOLOGY ?? 'monolithic');

function parseTopology(value: string): TopologyName {
  if (!(TOPOLOGIES as readonly string[]).includes(value)) throw new Error(`TEST_TOPOLOGY must be one of ${TOPOLOGIES.join(', ')}`);
  return value as TopologyName;
}

export interface TestApp {
  /** The process the public API is served by: the monolith, or the controller layer. */
  app: Application;
  /** The schema-qualified URL the app uses; a sibling app can share it. */
  databaseUrl: string;
  request: ReturnType<typeof supertest>;
  /** Runs SQL against the app's schema, to assert what was persisted. */
  sql<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]>;
  close: () => Promise<void>;
}

/** A logger whose JSON lines the test can read, for TestAppOptions.logger. */
export function capturingLogger(level = 'info') {
  const lines: { level: string; msg: string; [key: string]: unknown }[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as (typeof lines)[number]);
      done();
    },
  });
  return { logger: createLogger({ level, destination }), lines };
}

/** How to start a test app beyond its environment. */
export interface TestAppOptions {
  /** A second instance on this app's schema. */
  sameDatabaseAs?: TestApp;
  /** Logs to this logger (a monolithic app only), to read what the app logged. */
  logger?: Logger;
  /** Deploys this app so, whatever TEST_TOPOLOGY says (for a suite that runs in one project). */
  topology?: TopologyName;
  /** The URL the app is given for its database (a proxy's, say), from the test database's own. */
  databaseUrlAs?: (url: string) => string;
}

/**
 * Creates an empty schema, starts the app on it (migrations run at start-up) and tears both
 * down. With `sameDatabaseAs`, starts a second instance on that app's schema instead, as a second
 * process of one deployment would be; closing it leaves the schema to its owner.
 */
export async function createTestApp(overrides: Environment = {}, options: TestAppOptions = {}): Promise<TestApp> {
  const sibling = options.sameDatabaseAs;
  const owner = sibling === undefined;
  const database = await openTestDatabase(TEST_DATABASE_URL, `test_${Date.now()}_${randomBytes(4).toString('hex')}`, sibling?.databaseUrl);
  const name = isMysqlUrl(database.url) ? new URL(database.url).pathname.slice(1) : (new URL(database.url).searchParams.get('schema') ?? '');

  // TEST_REDIS_URL runs the whole API suite with the Redis-backed cache and counters.
  const redis = process.env.TEST_REDIS_URL === undefined ? {} : { REDIS_URL: process.env.TEST_REDIS_URL, REDIS_KEY_PREFIX: `${name}:` };
  const env: Environment = { ...TEST_ENV, ...redis, DATABASE_URL: options.databaseUrlAs?.(database.url) ?? database.url, ...overrides };
  let app: Application;
  try {
    const topology = options.topology ?? TEST_TOPOLOGY;
    app = topology === 'monolithic' || !owner ? await startLayer(env, options.logger) : await startSplitLayers(topology, env);
  } catch (error) {
    await database.close();
    throw error;
  }
  return {
    app,
    databaseUrl: database.url,
    request: supertest(app.http),
    sql: (text, values) => database.sql(text, values),
    close: async () => {
      await app.close();
      await database.close();
    },
  };
}

async function startLayer(env: Environment, logger?: Logger): Promise<Application> {
  const config = loadConfig(env);
  return createApplication(config, logger ?? createLogger({ level: config.logLevel }));
}

/** Serves an app's handlers on a free loopback port, the way src/main.js serves them. */
async function listenOnLoopback(app: Pick<Application, 'http' | 'http2' | 'vouch' | 'browserOrigins'>, env: Environment): Promise<{ port: number; close: () => Promise<void> }> {
  const config = loadConfig(env);
  const { server, close } = createDualProtocolServer(
    { http1: app.http, http2: app.http2 },
    {
      limits: config.server.connections,
      trustProxy: config.server.trustProxy,
      logger: createLogger({ level: config.logLevel }),
      bodyLimitBytes: config.server.bodyLimitBytes,
      vouch: app.vouch,
      browserOrigins: app.browserOrigins,
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return { port: typeof address === 'object' && address !== null ? address.port : 0, close };
}

/** Serves one layer on a loopback port, as its own process would; returns its base URL. */
async function serveLayer(env: Environment): Promise<{ url: string; app: Application }> {
  const app = await startLayer(env);
  const listening = await listenOnLoopback(app, env);
  const closeApp = app.close;
  app.close = async () => {
    // As src/main.js shuts down: watches would hold the drain open.
    app.drain();
    await listening.close();
    await closeApp();
  };
  return { url: `http://127.0.0.1:${listening.port}`, app };
}

/**
 * Starts the repository layer, the service layer (one process, or auth and users apart) and the
 * controller, each configured only through the environment, and returns the controller; closing
 * it closes the layers below, top down.
 */
async function startSplitLayers(topology: Exclude<TopologyName, 'monolithic'>, env: Environment): Promise<Application> {
  const { mode, protocol } = parseTopologyName(topology);
  const urls: Partial<Record<DeploymentLayer, string>> = {};
  const started: Application[] = [];
  try {
    // Bottom up, as src/topology.ts lists the layers: each one's downstream is up before it.
    for (const layer of layersOf(mode)) {
      const spec = TOPOLOGY[mode][layer];
      if (spec === undefined) throw new Error(`${mode} has no ${layer} layer`);
      const layerEnv: Environment = {
        ...env,
        DEPLOYMENT_MODE: mode,
        COMMUNICATION_PROTOCOL: protocol,
        DEPLOYMENT_LAYER: layer,
        ...(spec.holds.repository ? {} : { DATABASE_URL: undefined }),
        ...Object.fromEntries(Object.entries(spec.calls).map(([variable, callee]) => [variable, urls[callee]])),
      };
      if (spec.holds.controller) {
        const controller = await startLayer(layerEnv);
        const closeController = controller.close;
        controller.close = async () => {
          await closeController();
          for (const below of started.reverse()) await below.close();
        };
        return controller;
      }
      const served = await serveLayer(layerEnv);
      started.push(served.app);
      urls[layer] = served.url;
    }
    throw new Error(`${mode} has no controller layer`);
  } catch (error) {
    for (const layer of started.reverse()) await layer.close();
    throw error;
  }
}

/** The in-process layers of a monolithic test app, for suites that reach behind the API. */
export function monolithOf(t: TestApp): MonolithApplication {
  const { app } = t;
  if (app.rest === undefined || app.database === undefined || app.auth === undefined || app.users === undefined || app.audit === undefined || app.jobs === undefined) {
    throw new Error('this suite needs a monolithic app: it reaches behind the API');
  }
  return { ...app, rest: app.rest, database: app.database, auth: app.auth, users: app.users, audit: app.audit, jobs: app.jobs };
}

/** The Prisma repositories over the database of a test app that holds one, bypassing every cache. */
export function prismaRepositoriesOf(t: TestApp): { users: PrismaUserRepository; tokens: PrismaTokenRepository; audit: PrismaAuditRepository } {
  const database = t.app.database;
  if (database === undefined) throw new Error('this suite needs an app that holds the database');
  return { users: new PrismaUserRepository(database), tokens: new PrismaTokenRepository(database.prisma, database.dialect), audit: new PrismaAuditRepository(database.prisma) };
}

let counter = 0;

/** A valid registration body with a unique username and e-mail. */
export function newUser(prefix = 'user'): { username: string; email: string; password: string } {
  counter += 1;
  const id = `${prefix}_${process.pid}_${counter}`;
  return { username: id, email: `${id}@example.com`, password: 'Sturdy-Passw0rd!' };
}

/** Registers a user and returns its id and tokens. */
export async function register(t: TestApp, body = newUser()) {
  const res = await t.request.post('/api/v1/auth/register').send(body);
  if (res.status !== 201) throw new Error(`register failed: ${res.status} ${JSON.stringify(res.body)}`);
  return {
    ...body,
    id: res.body.data.user.id as number,
    accessToken: res.body.data.tokens.accessToken as string,
    refreshToken: res.body.data.tokens.refreshToken as string,
  };
}

/** Rows another transaction holds locked; see holdRows. */
export interface RowsHeld {
  /** Runs SQL on the holding connection, inside its transaction. */
  sql: TestDatabase['sql'];
  /** Rolls the transaction back and closes the connection; again, it does nothing. */
  release: () => Promise<void>;
}

/**
 * Another connection to `t`'s database that runs `lockingRead` (a `… FOR UPDATE`) in a
 * transaction it keeps open until released: the rows as a concurrent transaction would leave
 * them, for what a request does when it cannot have them in time.
 */
export async function holdRows(t: TestApp, lockingRead: string, values?: unknown[]): Promise<RowsHeld> {
  const connection = await openTestDatabase(TEST_DATABASE_URL, '', t.databaseUrl);
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    await connection.sql('ROLLBACK').catch(() => undefined);
    await connection.close();
  };
  try {
    await connection.sql('BEGIN');
    await connection.sql(lockingRead, values);
  } catch (error) {
    await release();
    throw error;
  }
  return { sql: (text, parameters) => connection.sql(text, parameters), release };
}

/** Logs the bootstrap administrator in and returns its access token. */
export async function loginAdmin(t: TestApp): Promise<string> {
  const res = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
  if (res.status !== 200) throw new Error(`admin login failed: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.data.tokens.accessToken as string;
}

export const bearer = (token: string): [string, string] => ['authorization', `Bearer ${token}`];

export interface TestServer extends TestApp {
  /** e.g. http://127.0.0.1:54321 — REST, Connect and gRPC-Web (HTTP/1.1) and gRPC (h2c). */
  baseUrl: string;
  port: number;
}

/** Like createTestApp, and also serves it on a real port the way src/main.js does. */
export async function startTestServer(
  overrides: Environment = {},
  options: Pick<TestAppOptions, 'logger' | 'topology' | 'sameDatabaseAs' | 'databaseUrlAs'> = {},
): Promise<TestServer> {
  const t = await createTestApp(overrides, options);
  // The connection settings come from the same variables; the database is the app's business.
  const { port, close } = await listenOnLoopback(t.app, { ...TEST_ENV, ...overrides });
  return {
    ...t,
    port,
    baseUrl: `http://127.0.0.1:${port}`,
    close: async () => {
      // As src/main.js shuts down: watches would hold the drain open.
      t.app.drain();
      await close();
      await t.close();
    },
  };
}
