// Configuration: read once from the environment, validated, and passed down explicitly.
// Nothing else in src/ reads process.env.
import { z } from 'zod';
import { compileTrust } from './infrastructure/client-address.ts';
import { DEPLOYMENT_LAYERS, DEPLOYMENT_MODES, holdingsOf, layerSpec, URL_VARIABLES, type DeploymentLayer, type UrlVariable } from './topology.ts';

const DEV_JWT_SECRET = 'arcana-development-secret-do-not-use-in-production';
/**
 * A random secret of 32 or more characters has far more: `openssl rand -hex 16` (the shortest,
 * 16 symbols) has fewer than 9 about 4 times in a million, where 10 refused 1 in 10 000 (helper
 * 96); a placeholder repeated (`REPLACE-ME`) has 8.
 */
const MIN_DISTINCT_SECRET_CHARACTERS = 9;
/**
 * Values this repository publishes, which production refuses wherever they would be a credential:
 * its development signing key, the tests' keys, the placeholders of k8s/base and the Compose
 * files' headers, and the passwords its README and tests print (helper 165: the README's example
 * admin password made a working production administrator). Compared case-insensitively.
 */
const PUBLISHED_SECRETS = new Set(
  [DEV_JWT_SECRET, 'test-secret-that-is-long-enough-for-hs256-0123456789', 'test-internal-secret-shared-by-every-layer', 'REPLACE-ME', 'change-me', 'change-me-too'].map((value) =>
    value.toLowerCase(),
  ),
);
const PUBLISHED_PASSWORDS = new Set(['Sturdy-Passw0rd!', 'Admin@12345'].map((value) => value.toLowerCase()));

/**
 * The passwords a database or Redis URL gives: its user part's, and a `password` parameter's,
 * which node-postgres, the MariaDB client and ioredis all read (node-postgres in preference to the
 * user part's: helper 167 got `?password=change-me` past a check of the user part alone).
 */
function urlPasswords(url: string | undefined): string[] {
  if (url === undefined || !URL.canParse(url)) return [];
  const parsed = new URL(url);
  const passwords = [parsed.password, ...parsed.searchParams.getAll('password')].filter((password) => password !== '');
  return passwords.map((password) => {
    try {
      return decodeURIComponent(password);
    } catch {
      return password;
    }
  });
}

/** OWASP's floor for bcrypt. */
const MIN_PRODUCTION_BCRYPT_ROUNDS = 10;

const list = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((value) =>
      value
        .split(',')
        .map((item) => item.trim())
        .filter((item) => item.length > 0),
    );

/**
 * A comma-separated list of web origins, each as a browser sends it in `Origin` (compared
 * exactly): `https://app.example.com`, not `https://App.example.com/`, which matched nothing.
 */
const origins = (fallback: string) =>
  list(fallback).pipe(
    z.array(
      // A wildcard is a character like any other to an exact comparison, so it matched nothing.
      z.string().refine((origin) => /^https?:\/\/[^*]+$/.test(origin) && URL.canParse(origin) && new URL(origin).origin === origin, {
        error: 'must be origins as browsers send them: http or https, a lower-case host without wildcards and a port other than the default, no path (https://app.example.com)',
      }),
    ),
  );

/**
 * A comma-separated list of base URLs of one layer's processes, e.g. `http://service:3001`. No
 * user part: `http://service:3001@evil.example` is a URL of evil.example (helper 95), which the
 * internal secret and every caller's token would then be sent to.
 */
const urls = () =>
  list('').pipe(
    z.array(
      z
        .string()
        .regex(/^https?:\/\/[^/?#\s@]+\/?$/, 'must be comma-separated http:// or https:// base URLs (scheme, host and port only, no user part)')
        .refine((url) => URL.canParse(url) && new URL(url).port !== '0', { error: 'must be URLs with a valid host and a port from 1 to 65535' })
        .transform((url) => url.replace(/\/$/, '')),
    ),
  );

const bool = (fallback: boolean) =>
  z
    .enum(['true', 'false', '1', '0'])
    .default(fallback ? 'true' : 'false')
    .transform((value) => value === 'true' || value === '1');

/** How a whole number (a hop count among them) is written, and how proxy-addr misreads one inside a list (`1` as 0.0.0.1). */
const BARE_NUMBER = /^\s*\d+\s*$/;

/**
 * A whole number written in decimal digits (spaces around it allowed). `z.coerce.number` read a
 * blank value as 0 (a cap of 0 is "no cap") and `0x10`, `1e3` or `0b11` as numbers (helper 95).
 */
const decimal = z
  .string()
  .regex(BARE_NUMBER, 'must be a whole number written in decimal digits')
  .transform((value) => Number(value));
const int = (fallback: number, min: number, max: number) => decimal.pipe(z.number().int().min(min).max(max)).default(fallback);
const optionalInt = (min: number, max: number) => decimal.pipe(z.number().int().min(min).max(max)).optional();

/**
 * The problem with a comma list of proxy addresses, subnets or proxy-addr's names, or undefined:
 * a bare number in it (proxy-addr read `1,2` as addresses 0.0.0.1 and 0.0.0.2, and every client
 * behind the proxy shared one address's limits), or what proxy-addr cannot compile. Checked here,
 * so that a typo stops the start before anything else runs, named as a setting.
 */
function proxyListProblem(value: string): string | undefined {
  if (value.split(',').some((part) => BARE_NUMBER.test(part))) return 'a list holds no hop counts';
  try {
    compileTrust(value);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/** Each key is the environment variable's name; defaults make a bare `npm start` work. */
const EnvSchema = z.object({
  // Unset means "not declared": production's strict checks stay off so a bare `npm start` works,
  // but nothing internal is exposed either (see `exposeInternals`).
  NODE_ENV: z.enum(['development', 'test', 'testing', 'production']).optional(),
  // Unset: every address of the host, IPv6 and IPv4 (Node listens on `::`, or on 0.0.0.0 where the
  // host has no IPv6). The default was 0.0.0.0, IPv4 only: on a cluster whose pods have IPv6
  // addresses, the kubelet's probes and the Services found nothing listening (helper 128).
  HOST: z.string().min(1).optional(),
  PORT: int(3000, 0, 65535),
  METRICS_PORT: int(0, 0, 65_535),
  /**
   * Loopback unless set: the metrics tell login failures apart by reason (unknown user, wrong
   * password, correct password of a blocked account), which is for operators, not for whoever can
   * reach the API's host. A scraper elsewhere needs it set (0.0.0.0 in a pod, say).
   */
  METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  // OpenTelemetry traces, exported over OTLP/HTTP (JSON); off unless an endpoint is given.
  OTEL_EXPORTER_OTLP_ENDPOINT: z
    .string()
    .regex(/^https?:\/\/[^\s]+$/, 'must be an http:// or https:// URL, e.g. http://collector:4318')
    .optional(),
  // The traces URL itself, when it is not <OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces.
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: z
    .string()
    .regex(/^https?:\/\/[^\s]+$/, 'must be an http:// or https:// URL')
    .optional(),
  OTEL_SERVICE_NAME: z.string().min(1).optional(),
  OTEL_BSP_SCHEDULE_DELAY: int(5_000, 0, 600_000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  TRUST_PROXY: z
    .string()
    .default('false')
    .transform((value) => value.trim())
    .superRefine((value, ctx) => {
      if (/^(true|false|\d+)$/.test(value)) return;
      const problem = proxyListProblem(value);
      if (problem !== undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `must be true, false, a number of hops, or comma-separated proxy addresses, subnets or loopback/linklocal/uniquelocal (${problem})`,
        });
      }
    }),
  // Addresses only: a proxy is trusted with the trace context it passes on only by name, never as
  // "every peer" (TRUST_PROXY's `true` or hop count, which the shipped manifests set, would make
  // every client's traceparent ours again).
  TRACE_TRUSTED_PROXIES: z
    .string()
    .default('')
    .transform((value) => value.trim())
    .superRefine((value, ctx) => {
      if (value === '') return;
      const problem = /^(true|false)$/i.test(value) ? 'every peer is no proxy' : proxyListProblem(value);
      if (problem !== undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `must be comma-separated proxy addresses, subnets or loopback/linklocal/uniquelocal, not true, false or a hop count (${problem})`,
        });
      }
    }),
  BODY_LIMIT: z
    .string()
    .regex(/^\d+(b|kb|mb)?$/i, 'must be a size such as 100kb or 1mb')
    .default('100kb')
    .transform(parseSize)
    .pipe(z.number().max(64 * 1024 * 1024, 'must be at most 64mb')),
  SHUTDOWN_TIMEOUT_MS: int(30_000, 0, 600_000),
  SHUTDOWN_IDLE_GRACE_MS: int(300, 0, 60_000),
  IDLE_HEAP_RELEASE_MB: int(32, 0, 4_096),
  // Connection bounds (see src/server.ts): every client gets a deadline for each thing it owes.
  PROTOCOL_DETECTION_TIMEOUT_MS: int(10_000, 50, 600_000),
  HTTP_HEADERS_TIMEOUT_MS: int(20_000, 50, 600_000),
  HTTP_REQUEST_TIMEOUT_MS: int(60_000, 50, 3_600_000),
  HTTP_KEEP_ALIVE_TIMEOUT_MS: int(65_000, 50, 3_600_000),
  HTTP2_IDLE_TIMEOUT_MS: int(300_000, 50, 86_400_000),
  HTTP2_MAX_CONCURRENT_STREAMS: optionalInt(1, 10_000),
  // Unset: a default that depends on whether the process faces clients (see resolveConnections).
  CONNECTIONS_PER_ADDRESS_MAX: optionalInt(0, 1_000_000),
  HTTP2_STREAMS_PER_ADDRESS_MAX: optionalInt(0, 1_000_000),
  HEALTH_WATCH_MAX: int(1_000, 1, 1_000_000),
  HEALTH_WATCH_PER_ADDRESS_MAX: int(100, 0, 1_000_000),
  HEALTH_WATCH_INTERVAL_MS: int(5_000, 10, 3_600_000),

  DATABASE_URL: z
    .string()
    .regex(/^(postgres(ql)?|mysql|mariadb):\/\//, 'must be a postgresql://, mysql:// or mariadb:// URL')
    .optional(),
  DATA_DIR: z.string().default('./.data'),
  DATABASE_LOCK_TIMEOUT_MS: int(5_000, 1_000, 600_000),
  // Unset: 5 s, or DATABASE_LOCK_TIMEOUT_MS when that is longer (see the check in loadConfig).
  DATABASE_QUERY_TIMEOUT_MS: optionalInt(100, 600_000),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
    .optional(),
  REDIS_KEY_PREFIX: z.string().default('arcana:'),
  CACHE_TTL_SECONDS: int(60, 1, 86_400),
  SESSION_PURGE_INTERVAL_MS: int(3_600_000, 1000, 7 * 86_400_000),
  // At least an hour (the rotated pairs' grace, token-repository.ts): a shorter retention let the
  // purge take a replayed chain's rows between its end and its marking, so that no theft alarm
  // was raised, and take a listed session's pair within the hour its id is promised to end the
  // session (helper 208, with 0).
  SESSION_PURGE_RETENTION_MS: int(86_400_000, 3_600_000, 365 * 86_400_000),
  AUDIT_RETENTION_DAYS: int(365, 0, 36_500),

  JWT_SECRET: z.string().optional(),
  // Bounded so that every token issued stays far below ACCESS_TOKEN_MAX_LENGTH (src/rpc/caller.ts).
  JWT_ISSUER: z.string().min(1).max(256).default('arcana-cloud'),
  JWT_AUDIENCE: z.string().min(1).max(256).default('arcana-cloud-api'),
  JWT_ACCESS_EXPIRES_IN_SECONDS: int(3600, 1, 86_400 * 7),
  JWT_REFRESH_EXPIRES_IN_SECONDS: int(2_592_000, 60, 86_400 * 365),
  BCRYPT_ROUNDS: int(12, 4, 15),
  PASSWORD_HASH_CONCURRENCY: int(0, 0, 256),
  PASSWORD_HASH_QUEUE_MAX: int(64, 0, 100_000),
  LIST_QUERY_CONCURRENCY: optionalInt(1, 1_000),
  LIST_QUERY_QUEUE_MAX: int(256, 0, 100_000),

  DEPLOYMENT_MODE: z.enum(DEPLOYMENT_MODES).default('monolithic'),
  DEPLOYMENT_LAYER: z.enum(DEPLOYMENT_LAYERS).default('monolithic'),
  COMMUNICATION_PROTOCOL: z.enum(['direct', 'http', 'grpc']).optional(),
  SERVICE_URLS: urls(),
  AUTH_SERVICE_URLS: urls(),
  USER_SERVICE_URLS: urls(),
  REPOSITORY_URLS: urls(),
  // Long enough for a login that waits its turn in a full password-hash queue (64 waiting on two
  // cores at cost 12: about 7 s on a fast machine, 11.4 s at the 5.6 hashes a second this one
  // managed on a slow day), so a split topology queues the logins a monolith would queue rather
  // than refusing them: at 10 s, 50 clients that retry at once were refused by the hash gate's
  // deadline and their retries took the cores from bcrypt (0.51 of the ceiling). Longer too than
  // the database's own bounds (a pooled connection and a statement, DATABASE_QUERY_TIMEOUT_MS
  // each), so the repository answers 503 itself; a stalled layer still gets a 503 within it.
  INTERNAL_TIMEOUT_MS: int(30_000, 50, 300_000),
  INTERNAL_API_SECRET: z.string().optional(),
  INTERNAL_RETRIES: int(2, 0, 10),

  RATE_LIMIT_ENABLED: bool(true),
  RATE_LIMIT_WINDOW_MS: int(3_600_000, 1000, 86_400_000),
  RATE_LIMIT_MAX: int(100, 1, 1_000_000),
  LOGIN_MAX_FAILURES: int(5, 1, 1000),
  LOGIN_LOCKOUT_SECONDS: int(900, 1, 86_400),
  LOGIN_ACCOUNT_RATE_LIMIT_MAX: int(30, 1, 1_000_000),
  LOGIN_ACCOUNT_RATE_LIMIT_WINDOW_MS: int(900_000, 1000, 86_400_000),
  LOGIN_KNOWN_DEVICE_TTL_SECONDS: int(7_776_000, 60, 400 * 86_400),
  SESSION_ABSOLUTE_LIFETIME_SECONDS: int(2_592_000, 1, 400 * 86_400),
  SESSIONS_PER_USER_MAX: int(100, 1, 100_000),
  CORS_ORIGINS: origins('http://localhost:3000'),

  ADMIN_USERNAME: z.string().optional(),
  ADMIN_EMAIL: z.string().optional(),
  ADMIN_PASSWORD: z.string().optional(),
  // When no active administrator is left, restore the bootstrap account as one (see bootstrap-admin.ts).
  ADMIN_BOOTSTRAP_RECOVER: bool(false),

  OPENAPI_VALIDATE_RESPONSES: bool(false),
});

export type Environment = Record<string, string | undefined>;

/** A configuration problem that must stop the process before it serves anything. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** DATABASE_QUERY_TIMEOUT_MS's default, unless DATABASE_LOCK_TIMEOUT_MS is longer. */
const DEFAULT_QUERY_TIMEOUT_MS = 5_000;

export function loadConfig(env: Environment) {
  // Empty strings mean "unset", as they do in most .env tooling.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== ''));
  const parsed = EnvSchema.safeParse(cleaned);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `  ${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`Invalid configuration:\n${problems.join('\n')}`);
  }
  const e = parsed.data;
  const production = e.NODE_ENV === 'production';

  const deployment = resolveDeployment(e);
  // Only the processes that hold the service layer sign or check tokens.
  const holdings = holdingsOf(deployment.layer);
  const holdsServices = holdings.auth || holdings.users;
  if (production && holdsServices && (e.JWT_SECRET === undefined || e.JWT_SECRET.length < 64)) {
    throw new ConfigError('JWT_SECRET must be set to at least 64 characters in production (e.g. `openssl rand -base64 64`).');
  }
  if (e.JWT_SECRET !== undefined && e.JWT_SECRET.length < 32) {
    throw new ConfigError('JWT_SECRET must be at least 32 characters.');
  }
  if (e.INTERNAL_API_SECRET !== undefined && e.INTERNAL_API_SECRET.length < 32) {
    throw new ConfigError('INTERNAL_API_SECRET must be at least 32 characters.');
  }
  if (production) {
    // Long is not enough: 64 spaces, "a" 64 times or a placeholder repeated were taken (helper 95).
    for (const [name, secret] of [
      ['JWT_SECRET', e.JWT_SECRET],
      ['INTERNAL_API_SECRET', e.INTERNAL_API_SECRET],
    ] as const) {
      if (secret !== undefined && new Set(secret.replace(/\s/g, '')).size < MIN_DISTINCT_SECRET_CHARACTERS) {
        throw new ConfigError(`${name} must be random in production: it has fewer than ${MIN_DISTINCT_SECRET_CHARACTERS} different characters (e.g. \`openssl rand -base64 64\`).`);
      }
    }
    for (const [name, secret] of [
      ['JWT_SECRET', e.JWT_SECRET],
      ['INTERNAL_API_SECRET', e.INTERNAL_API_SECRET],
      ...urlPasswords(e.DATABASE_URL).map((password) => ["DATABASE_URL's password", password] as const),
      ...urlPasswords(e.REDIS_URL).map((password) => ["REDIS_URL's password", password] as const),
    ]) {
      if (secret !== undefined && PUBLISHED_SECRETS.has(secret.toLowerCase())) {
        throw new ConfigError(`${name} is a value this repository publishes (a placeholder, an example or a test key): set your own in production.`);
      }
    }
    if (e.ADMIN_PASSWORD !== undefined && PUBLISHED_PASSWORDS.has(e.ADMIN_PASSWORD.toLowerCase())) {
      throw new ConfigError(
        'ADMIN_PASSWORD is a password this repository prints (README, tests): whoever reads them could sign in as the administrator. Set your own in production.',
      );
    }
    if (e.JWT_SECRET !== undefined && e.JWT_SECRET === e.INTERNAL_API_SECRET) {
      throw new ConfigError('JWT_SECRET and INTERNAL_API_SECRET must differ: every process holds the internal secret, only the services need the signing key.');
    }
    if (e.BCRYPT_ROUNDS < MIN_PRODUCTION_BCRYPT_ROUNDS) {
      throw new ConfigError(
        `BCRYPT_ROUNDS must be at least ${MIN_PRODUCTION_BCRYPT_ROUNDS} in production (${e.BCRYPT_ROUNDS} makes each stolen hash ${2 ** (MIN_PRODUCTION_BCRYPT_ROUNDS - e.BCRYPT_ROUNDS)}× cheaper to crack).`,
      );
    }
  }
  if (production && deployment.mode !== 'monolithic' && e.INTERNAL_API_SECRET === undefined) {
    // The internal APIs hand out password hashes and act for any user: in production only the
    // deployment's own processes may call them.
    throw new ConfigError(
      `DEPLOYMENT_MODE=${deployment.mode} in production needs INTERNAL_API_SECRET (≥ 32 characters, the same in every process), which the internal APIs require of their callers.`,
    );
  }
  // A statement's bound counts its lock waits too: a lock wait allowed longer would end earlier.
  const queryTimeoutMs = e.DATABASE_QUERY_TIMEOUT_MS ?? Math.max(DEFAULT_QUERY_TIMEOUT_MS, e.DATABASE_LOCK_TIMEOUT_MS);
  if (queryTimeoutMs < e.DATABASE_LOCK_TIMEOUT_MS) {
    throw new ConfigError("DATABASE_QUERY_TIMEOUT_MS must not be shorter than DATABASE_LOCK_TIMEOUT_MS: a statement's time includes its wait for locks.");
  }
  // A session ends when its refresh token does; an access token outliving it would go on working
  // after the session's end, unseen by the session lists and by revocations, which look for live
  // sessions (helper 108: revoke-all, a password change and an administrator's end of all
  // sessions left such tokens working).
  if (e.JWT_ACCESS_EXPIRES_IN_SECONDS > e.JWT_REFRESH_EXPIRES_IN_SECONDS) {
    throw new ConfigError('JWT_ACCESS_EXPIRES_IN_SECONDS must not be longer than JWT_REFRESH_EXPIRES_IN_SECONDS: an access token must not outlive its session.');
  }
  const admin = [e.ADMIN_USERNAME, e.ADMIN_EMAIL, e.ADMIN_PASSWORD];
  if (admin.some((v) => v !== undefined) && admin.some((v) => v === undefined)) {
    throw new ConfigError('ADMIN_USERNAME, ADMIN_EMAIL and ADMIN_PASSWORD must be set together.');
  }

  return {
    nodeEnv: e.NODE_ENV ?? 'unset',
    isProduction: production,
    /** Error text and stacks in 500 answers: only where development was asked for by name. */
    exposeInternals: e.NODE_ENV === 'development',
    server: {
      host: e.HOST,
      port: e.PORT,
      trustProxy: parseTrustProxy(e.TRUST_PROXY),
      /** The proxies whose `traceparent` the public edge continues; none (false) by default. */
      traceTrustedProxies: e.TRACE_TRUSTED_PROXIES === '' ? (false as const) : e.TRACE_TRUSTED_PROXIES,
      /** Largest request body in bytes, for REST JSON and RPC messages alike. */
      bodyLimitBytes: e.BODY_LIMIT,
      shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
      /** How long a draining server leaves idle keep-alive and silent connections for a last request. */
      shutdownIdleGraceMs: e.SHUTDOWN_IDLE_GRACE_MS,
      /** How far the heap must grow past what the last collection left before an idle process collects (MiB); 0: never. */
      idleHeapReleaseMb: e.IDLE_HEAP_RELEASE_MB,
      connections: resolveConnections(e, deployment.layer),
    },
    health: { watchIntervalMs: e.HEALTH_WATCH_INTERVAL_MS, maxWatches: e.HEALTH_WATCH_MAX, maxWatchesPerAddress: e.HEALTH_WATCH_PER_ADDRESS_MAX },
    logLevel: e.LOG_LEVEL,
    /** Prometheus metrics on a port of their own; 0 (the default) serves none. */
    metrics: { port: e.METRICS_PORT, host: e.METRICS_HOST },
    /**
     * OpenTelemetry tracing: on when an OTLP endpoint is set (traces go to `url`), off (undefined)
     * otherwise. Each process names itself after its layer unless OTEL_SERVICE_NAME says otherwise.
     */
    tracing:
      e.OTEL_EXPORTER_OTLP_ENDPOINT === undefined && e.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT === undefined
        ? undefined
        : {
            url: e.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? `${(e.OTEL_EXPORTER_OTLP_ENDPOINT ?? '').replace(/\/$/, '')}/v1/traces`,
            serviceName: e.OTEL_SERVICE_NAME ?? (deployment.layer === 'monolithic' ? 'arcana-cloud' : `arcana-cloud-${deployment.layer}`),
            scheduleDelayMs: e.OTEL_BSP_SCHEDULE_DELAY,
          },
    database: { databaseUrl: e.DATABASE_URL, dataDir: e.DATA_DIR, lockTimeoutMs: e.DATABASE_LOCK_TIMEOUT_MS, queryTimeoutMs },
    redis: e.REDIS_URL === undefined ? undefined : { url: e.REDIS_URL, keyPrefix: e.REDIS_KEY_PREFIX },
    cacheTtlSeconds: e.CACHE_TTL_SECONDS,
    sessionPurge: { intervalMs: e.SESSION_PURGE_INTERVAL_MS, retentionMs: e.SESSION_PURGE_RETENTION_MS },
    auditRetentionMs: e.AUDIT_RETENTION_DAYS * 86_400_000,
    jwt: {
      secret: e.JWT_SECRET ?? DEV_JWT_SECRET,
      /** Only where it is used: the controller and the repository neither sign nor check tokens. */
      usingDevelopmentSecret: e.JWT_SECRET === undefined && holdsServices,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
      accessTtlSeconds: e.JWT_ACCESS_EXPIRES_IN_SECONDS,
      refreshTtlSeconds: e.JWT_REFRESH_EXPIRES_IN_SECONDS,
    },
    bcryptRounds: e.BCRYPT_ROUNDS,
    passwordHashing: {
      /** 0: one per core (bcrypt runs on libuv's thread pool, one hash per core at full speed). */
      concurrency: e.PASSWORD_HASH_CONCURRENCY === 0 ? undefined : e.PASSWORD_HASH_CONCURRENCY,
      maxWaiting: e.PASSWORD_HASH_QUEUE_MAX,
    },
    /** Pages of users and of audit events: each counts every match of its filter. */
    listQueries: { concurrency: e.LIST_QUERY_CONCURRENCY, maxWaiting: e.LIST_QUERY_QUEUE_MAX },
    deployment,
    rateLimit: { enabled: e.RATE_LIMIT_ENABLED, windowMs: e.RATE_LIMIT_WINDOW_MS, max: e.RATE_LIMIT_MAX },
    login: {
      maxFailures: e.LOGIN_MAX_FAILURES,
      lockoutMs: e.LOGIN_LOCKOUT_SECONDS * 1000,
      accountMaxAttempts: e.LOGIN_ACCOUNT_RATE_LIMIT_MAX,
      accountWindowMs: e.LOGIN_ACCOUNT_RATE_LIMIT_WINDOW_MS,
      knownDeviceTtlSeconds: e.LOGIN_KNOWN_DEVICE_TTL_SECONDS,
    },
    /** A login chain's absolute lifetime; each refresh slides the session, never past it. */
    sessionLifetimeSeconds: e.SESSION_ABSOLUTE_LIFETIME_SECONDS,
    /** Live sessions (login chains) a user may hold; a login past it ends the oldest. */
    sessionsPerUser: e.SESSIONS_PER_USER_MAX,
    corsOrigins: e.CORS_ORIGINS,
    bootstrapAdmin:
      e.ADMIN_USERNAME !== undefined && e.ADMIN_EMAIL !== undefined && e.ADMIN_PASSWORD !== undefined
        ? { username: e.ADMIN_USERNAME, email: e.ADMIN_EMAIL, password: e.ADMIN_PASSWORD, recover: e.ADMIN_BOOTSTRAP_RECOVER }
        : undefined,
    openapi: { validateResponses: e.OPENAPI_VALIDATE_RESPONSES },
  };
}

export type Config = ReturnType<typeof loadConfig>;

type Env = z.infer<typeof EnvSchema>;

/** Every variable the configuration reads (for the deployment files' check). */
export const ENVIRONMENT_VARIABLES: readonly string[] = Object.keys(EnvSchema.shape);
export type { DeploymentLayer } from './topology.ts';

/**
 * The topology this process takes part in, checked as a whole: a layer that does not belong to
 * the mode, a protocol that cannot connect the layers, or a missing or stray URL list stops the
 * process with a message saying what to set, rather than running something other than asked.
 */
function resolveDeployment(e: Env) {
  const mode = e.DEPLOYMENT_MODE;
  const layer = e.DEPLOYMENT_LAYER;
  const spec = layerSpec(mode, layer);
  if (spec === undefined) {
    throw new ConfigError(
      `DEPLOYMENT_LAYER=${layer} is not a layer of DEPLOYMENT_MODE=${mode}; use one of: ${DEPLOYMENT_LAYERS.filter((name) => layerSpec(mode, name) !== undefined).join(', ')}.`,
    );
  }
  const protocol = e.COMMUNICATION_PROTOCOL ?? (mode === 'monolithic' ? 'direct' : 'grpc');
  if (mode === 'monolithic' && protocol !== 'direct') {
    throw new ConfigError(`DEPLOYMENT_MODE=monolithic calls its layers in-process: COMMUNICATION_PROTOCOL must be direct, not ${protocol}.`);
  }
  if (mode !== 'monolithic' && protocol === 'direct') {
    throw new ConfigError(`DEPLOYMENT_MODE=${mode} runs layers as separate processes: COMMUNICATION_PROTOCOL must be http or grpc.`);
  }
  // Our gRPC client speaks HTTP/2 over plain TCP (h2c): an https:// URL was called in cleartext,
  // to port 80 when it named none, with the internal secret and the caller's token in its
  // headers (helper 95). Refused rather than quietly downgraded.
  const cleartextOnly = protocol === 'grpc' ? URL_VARIABLES.flatMap((name) => e[name]).filter((url) => url.startsWith('https:')) : [];
  if (cleartextOnly.length > 0) {
    throw new ConfigError(
      `COMMUNICATION_PROTOCOL=grpc calls the layers over cleartext HTTP/2 (h2c), so it cannot honour ${cleartextOnly.join(', ')}: give http:// URLs and protect the links in the network (the NetworkPolicies, a mesh's mTLS), or use COMMUNICATION_PROTOCOL=http, whose client speaks TLS to https:// URLs.`,
    );
  }
  // The URL lists the layer calls must be set, and nothing else may be.
  const needed = new Set<UrlVariable>(Object.keys(spec.calls) as UrlVariable[]);
  const given = Object.fromEntries(URL_VARIABLES.map((name) => [name, e[name]])) as Record<UrlVariable, string[]>;
  const missing = Object.entries(given)
    .filter(([name, value]) => needed.has(name as UrlVariable) && value.length === 0)
    .map(([name]) => name);
  if (missing.length > 0) {
    throw new ConfigError(`DEPLOYMENT_LAYER=${layer} in DEPLOYMENT_MODE=${mode} calls other processes: set ${missing.join(' and ')}.`);
  }
  const stray = Object.entries(given)
    .filter(([name, value]) => value.length > 0 && !needed.has(name as UrlVariable))
    .map(([name]) => name);
  if (stray.length > 0) {
    throw new ConfigError(`DEPLOYMENT_LAYER=${layer} in DEPLOYMENT_MODE=${mode} does not use ${stray.join(', ')}; unset it.`);
  }
  if (e.DATABASE_URL !== undefined && !spec.holds.repository) {
    throw new ConfigError(`DEPLOYMENT_LAYER=${layer} reaches the database through the repository layer; DATABASE_URL belongs to the repository layer only.`);
  }
  return {
    mode,
    layer,
    protocol,
    serviceUrls: e.SERVICE_URLS,
    authServiceUrls: e.AUTH_SERVICE_URLS,
    userServiceUrls: e.USER_SERVICE_URLS,
    repositoryUrls: e.REPOSITORY_URLS,
    /** Deadline of an internal call that no incoming deadline shortens. */
    internalTimeoutMs: e.INTERNAL_TIMEOUT_MS,
    /** Further attempts of a failed internal call that is safe to repeat. */
    internalRetries: e.INTERNAL_RETRIES,
    /** What internal calls present and internal APIs require; unset, they are open (development). */
    internalSecret: mode === 'monolithic' ? undefined : e.INTERNAL_API_SECRET,
  };
}

/**
 * The bounds src/server.ts puts on every connection. The per-address caps default to values a
 * NAT'd office or a client's connection pool stays well below in a process that serves the public
 * API, and to none (0) in an internal layer, whose only peers are the layer above it and whose
 * connection count grows with that layer's load.
 */
function resolveConnections(e: Env, layer: DeploymentLayer) {
  if (e.HTTP_HEADERS_TIMEOUT_MS > e.HTTP_REQUEST_TIMEOUT_MS) {
    throw new ConfigError('HTTP_HEADERS_TIMEOUT_MS must not exceed HTTP_REQUEST_TIMEOUT_MS: the headers are part of the request.');
  }
  const facesClients = holdingsOf(layer).controller;
  return {
    protocolDetectionTimeoutMs: e.PROTOCOL_DETECTION_TIMEOUT_MS,
    headersTimeoutMs: e.HTTP_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: e.HTTP_REQUEST_TIMEOUT_MS,
    keepAliveTimeoutMs: e.HTTP_KEEP_ALIVE_TIMEOUT_MS,
    http2IdleTimeoutMs: e.HTTP2_IDLE_TIMEOUT_MS,
    // An internal layer's only peers are the layers above, whose calls all travel over one
    // connection: with a public port's 100, calls waiting their turn below (lists queued for the
    // database) held every stream, and every other call of every client queued behind them.
    http2MaxConcurrentStreams: e.HTTP2_MAX_CONCURRENT_STREAMS ?? (facesClients ? 100 : 10_000),
    /** 0: no cap. */
    connectionsPerAddress: e.CONNECTIONS_PER_ADDRESS_MAX ?? (facesClients ? 128 : 0),
    /** 0: no cap. */
    http2StreamsPerAddress: e.HTTP2_STREAMS_PER_ADDRESS_MAX ?? (facesClients ? 400 : 0),
  };
}

function parseSize(value: string): number {
  const match = /^(\d+)(b|kb|mb)?$/i.exec(value);
  const unit = (match?.[2] ?? 'b').toLowerCase();
  return Number(match?.[1]) * (unit === 'mb' ? 1024 * 1024 : unit === 'kb' ? 1024 : 1);
}

/** Express's `trust proxy`: false, true, a hop count, or a list of addresses/subnets. */
function parseTrustProxy(value: string): boolean | number | string {
  if (value === 'false' || value === '0') return false;
  if (value === 'true') return true;
  return /^\d+$/.test(value) ? Number(value) : value;
}
