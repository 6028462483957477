// Builds the real application against a fresh PostgreSQL schema, for tests through the API.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import supertest from 'supertest';
import { createApplication, type Application } from '../../src/app.ts';
import { loadConfig, type Environment } from '../../src/config.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';

export const ADMIN = { username: 'root_admin', email: 'admin@arcana.test', password: 'Admin@12345' };

/** Settings every test app shares: fast bcrypt, no throttling, responses checked against openapi.yaml. */
export const TEST_ENV: Environment = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'silent',
  BCRYPT_ROUNDS: '4',
  RATE_LIMIT_MAX: '1000000',
  OPENAPI_VALIDATE_RESPONSES: 'true',
  JWT_SECRET: 'test-secret-that-is-long-enough-for-hs256-0123456789',
  ADMIN_USERNAME: ADMIN.username,
  ADMIN_EMAIL: ADMIN.email,
  ADMIN_PASSWORD: ADMIN.password,
};

export interface TestApp {
  app: Application;
  /** The schema-qualified URL the app uses; a sibling app can share it. */
  databaseUrl: string;
  request: ReturnType<typeof supertest>;
  /** Runs SQL against the app's schema, to assert what was persisted. */
  sql<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

/**
 * Creates an empty schema, starts the app on it (migrations run at start-up) and tears both
 * down. With `sameDatabaseAs`, starts a second instance on that app's schema instead, as a second
 * process of one deployment would be; closing it leaves the schema to its owner.
 */
export async function createTestApp(overrides: Environment = {}, options: { sameDatabaseAs?: TestApp } = {}): Promise<TestApp> {
  const sibling = options.sameDatabaseAs;
  const owner = sibling === undefined;
  const schema = sibling === undefined ? `test_${Date.now()}_${randomBytes(4).toString('hex')}` : (new URL(sibling.databaseUrl).searchParams.get('schema') ?? '');
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  if (owner) await admin.query(`CREATE SCHEMA "${schema}"`);
  await admin.query(`SET search_path TO "${schema}"`);

  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('schema', schema);
  // TEST_REDIS_URL runs the whole API suite with the Redis-backed cache and counters.
  const redis = process.env.TEST_REDIS_URL === undefined ? {} : { REDIS_URL: process.env.TEST_REDIS_URL, REDIS_KEY_PREFIX: `${schema}:` };
  const config = loadConfig({ ...TEST_ENV, ...redis, DATABASE_URL: url.toString(), ...overrides });
  let app: Application;
  try {
    app = await createApplication(config, createLogger({ level: config.logLevel }));
  } catch (error) {
    if (owner) await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    await admin.end();
    throw error;
  }
  return {
    app,
    databaseUrl: url.toString(),
    request: supertest(app.http),
    sql: async (text, values) => (await admin.query(text, values)).rows,
    close: async () => {
      await app.close();
      if (owner) await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
      await admin.end();
    },
  };
}

let counter = 0;

/** A valid registration body with a unique username and e-mail. */
export function newUser(prefix = 'user'): { username: string; email: string; password: string } {
  counter += 1;
  const id = `${prefix}_${process.pid}_${counter}`;
  return { username: id, email: `${id}@example.com`, password: 'Passw0rd!' };
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

/** Like createTestApp, and also serves it on a real port the way src/main.ts does. */
export async function startTestServer(overrides: Environment = {}): Promise<TestServer> {
  const t = await createTestApp(overrides);
  const { createDualProtocolServer } = await import('../../src/server.ts');
  const { server, close } = createDualProtocolServer({ http1: t.app.http, http2: t.app.http2 });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    ...t,
    port,
    baseUrl: `http://127.0.0.1:${port}`,
    close: async () => {
      await close();
      await t.close();
    },
  };
}
