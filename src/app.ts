// The composition root: the one place that builds repositories → services → facades for this
// process. Which of those run here and which are typed clients of another process is decided by
// the deployment configuration alone; the layers themselves never ask. Nothing is created at
// import time; everything is passed down explicitly.
import { cors as connectCors, createClient, type Transport } from '@connectrpc/connect';
import cors from 'cors';
import express, { type Express } from 'express';
import { JSON_SCHEMA, load as parseYaml } from 'js-yaml';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { join } from 'node:path';
import packageJson from '../package.json' with { type: 'json' };
import { AuditRepositoryService } from '../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import { CounterStoreService } from '../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { IdempotencyRepositoryService } from '../gen/proto/arcana/internal/repository/v1/idempotency_repository_service_pb.js';
import { TokenRepositoryService } from '../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import { UserRepositoryService } from '../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { AuditService as AuditServiceDescriptor } from '../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { AuthService as AuthServiceDescriptor, RegisterRequestSchema } from '../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { create } from '@bufbuild/protobuf';
import { UnavailableError, ValidationError } from './domain/errors.ts';
import { UserService as UserServiceDescriptor } from '../gen/proto/arcana/user/v1/user_service_pb.js';
import { ConfigError, type Config } from './config.ts';
import { holdingsOf, type LayerHoldings } from './topology.ts';
import { createLayerTransport } from './communication/layer-transport.ts';
import { createLayerRoutes, internalAuthGate, layerCallValues, layerContextInterceptor, presentsSecret, type LayerApis } from './communication/layer-server.ts';
import { layerServerErrorInterceptor } from './communication/layer-errors.ts';
import {
  RemoteAuditRepository,
  RemoteCounterStore,
  RemoteIdempotencyRepository,
  RemoteTokenRepository,
  RemoteUserRepository,
} from './communication/repository/remote-repositories.ts';
import { securityHeaders } from './controllers/rest/security-headers.ts';
import { createRestApp } from './controllers/rest/rest-app.ts';
import { hasBody } from './controllers/edge-input.ts';
import type { ServiceClients } from './controllers/rest/service-call.ts';
import { forwardingService } from './controllers/rpc/forwarding.ts';
import { createInProcessTransport, type InProcessService } from './rpc/in-process-transport.ts';
import { createServiceApis } from './services/api/service-apis.ts';
import { createSystemRoutes } from './controllers/rest/system-routes.ts';
import { downstreamReady, sharedCheck, type ReadinessCheck } from './rpc/readiness.ts';
import { createErrorHandler, notFoundHandler } from './controllers/rest/error-handler.ts';
import { createConnectRoutes } from './controllers/rpc/connect-routes.ts';
import type { HealthWatchOptions } from './rpc/health-service.ts';
import { errorInterceptor, rateLimitGate, requestContextInterceptor, validationInterceptor } from './controllers/rpc/interceptors.ts';
import { RequestValidator, type OpenApiComponents } from './controllers/rpc/request-validator.ts';
import { createContextValuesFor } from './controllers/rpc/rpc-context.ts';
import { createClientAddressResolver, createPeerTrust } from './infrastructure/client-address.ts';
import { createRpcNodeHandler } from './controllers/rpc/rpc-node-handler.ts';
import { createDatabase, type Database } from './infrastructure/database/database.ts';
import { applyMigrations } from './infrastructure/database/migrations.ts';
import type { Logger } from './infrastructure/logger.ts';
import { countingCache, MemoryCache, RedisCache, type Cache } from './infrastructure/cache.ts';
import { FixedWindowRateLimiter, MemoryCounterStore, RedisCounterStore, type CounterStore } from './infrastructure/rate-limiter.ts';
import { createRedisClient, waitUntilReady, type Redis } from './infrastructure/redis/redis-client.ts';
import { DeviceTokens } from './infrastructure/security/device-tokens.ts';
import { loadCommonPasswords, PasswordHasher } from './infrastructure/security/password-hasher.ts';
import { WorkGate } from './infrastructure/work-gate.ts';
import { Metrics } from './infrastructure/metrics.ts';
import { createTracing, tracedCache, tracedRepository, type Tracing } from './infrastructure/tracing.ts';
import { TokenCodec } from './infrastructure/security/token-codec.ts';
import { CachedTokenRepository } from './repositories/cached-token-repository.ts';
import { CachedUserRepository } from './repositories/cached-user-repository.ts';
import { PrismaTokenRepository, type TokenRepository } from './repositories/token-repository.ts';
import { PrismaUserRepository, type UserRepository } from './repositories/user-repository.ts';
import { RowTurns } from './repositories/row-turns.ts';
import { withinRequestTime } from './repositories/request-time.ts';
import { PrismaAuditRepository, type AuditRepository } from './repositories/audit-repository.ts';
import { PrismaIdempotencyRepository, type IdempotencyRepository } from './repositories/idempotency-repository.ts';
import { LoginThrottle } from './services/login-throttle.ts';
import { IdempotentRequests } from './services/idempotency.ts';
import { AuthUseCases } from './services/auth-use-cases.ts';
import { ensureBootstrapAdmin } from './services/bootstrap-admin.ts';
import { UserUseCases } from './services/user-use-cases.ts';
import { AuditUseCases, type AuditEventInput, type AuditLog } from './services/audit-use-cases.ts';
import { createJobRunner, type JobRunner } from './jobs/job-runner.ts';

const ROOT = join(import.meta.dirname, '..');
export const OPENAPI_PATH = join(ROOT, 'openapi.yaml');
export const MIGRATIONS_PATH = join(ROOT, 'prisma', 'migrations');
/** The same migrations for MySQL/MariaDB, diffed from the schema derived for it (prisma/mysql). */
export const MYSQL_MIGRATIONS_PATH = join(ROOT, 'prisma', 'mysql', 'migrations');

/** The process's handlers, and the layers it holds (absent where another process holds them). */
export interface Application {
  /** HTTP/1.1 requests: REST (or, in an internal layer, /health and /ready), Connect and gRPC-Web. */
  http: (req: IncomingMessage, res: ServerResponse) => void;
  /** HTTP/2 requests: gRPC, Connect and gRPC-Web RPCs. */
  http2: (req: Http2ServerRequest, res: Http2ServerResponse) => void;
  /** What this process needs to serve: its database, or the layers below it. */
  readiness: Record<string, ReadinessCheck>;
  /** The public REST app, in a process that holds the controller layer. */
  rest?: Express | undefined;
  /** The database, in a process that holds the repository layer. */
  database?: Database | undefined;
  /** The use cases, in a process that holds the service layer (tests reach behind the API through them). */
  auth?: AuthUseCases | undefined;
  users?: UserUseCases | undefined;
  audit?: AuditUseCases | undefined;
  /** Background work, in a process that holds the service layer. */
  jobs?: JobRunner | undefined;
  /**
   * In an internal layer with INTERNAL_API_SECRET: whether a request's Authorization presents it.
   * The server holds the requests that do not to a few at once (DualProtocolServerOptions.vouch).
   */
  vouch?: ((authorization: string | undefined) => boolean) | undefined;
  /**
   * In a process that holds the public APIs: the origins whose pages may call them from a browser
   * (CORS_ORIGINS); the server refuses browsers' requests for other sites' pages before they are
   * charged (DualProtocolServerOptions.browserOrigins).
   */
  browserOrigins?: readonly string[] | undefined;
  /** Prometheus metrics, when METRICS_PORT is set: serve `metrics.registry` on that port. */
  metrics?: Metrics | undefined;
  /**
   * Ends what would otherwise outlive a graceful shutdown: health watches are told NOT_SERVING
   * and completed, and health checks answer NOT_SERVING from then on. Call before draining.
   * `finishBy` (epoch milliseconds): when the shutdown will cut what is still open; password
   * hashes and listings that could not be done by then are refused now (503, Retry-After) instead
   * of cut off.
   */
  drain(finishBy?: number): void;
  close: () => Promise<void>;
}

/** A monolith's Application: every layer is here. */
export type MonolithApplication = Application & Required<Pick<Application, 'rest' | 'database' | 'auth' | 'users' | 'audit' | 'jobs'>>;

interface Repositories {
  users: UserRepository;
  tokens: TokenRepository;
  audit: AuditRepository;
  counters: CounterStore;
  idempotency: IdempotencyRepository;
}

/** Builds this process's part of the application, as DEPLOYMENT_MODE and DEPLOYMENT_LAYER say. */
export async function createApplication(config: Config, logger: Logger): Promise<Application> {
  const { layer } = config.deployment;
  const holds = holdingsOf(layer);
  const closers: (() => Promise<void> | void)[] = [];
  const draining = new AbortController();
  const onDrain: ((finishBy: number) => void)[] = [];
  const drain = (finishBy?: number) => {
    draining.abort();
    if (finishBy !== undefined) for (const hook of onDrain) hook(finishBy);
  };
  const close = async () => {
    for (const closeOne of closers.reverse()) await closeOne();
  };
  const metrics = config.metrics.port === 0 ? undefined : new Metrics();
  // Closed last (closers run in reverse): the spans of the shutdown's own work are exported too.
  const tracing = config.tracing === undefined ? undefined : await createTracing({ ...config.tracing, serviceVersion: packageJson.version, layer, logger });
  if (tracing !== undefined) closers.push(() => tracing.close());
  const parts: ProcessParts = { config, logger, metrics, tracing, closers, readiness: {}, health: { ...config.health, draining: draining.signal }, onDrain };

  try {
    const shared = connectSharedState(parts);
    const { database, repositories } = await buildRepositoryLayer(parts, shared, holds);
    await shared.ready;
    const service = repositories === undefined || !(holds.auth || holds.users) ? undefined : await buildServiceLayer(parts, shared, repositories, holds);
    const held = { database, auth: service?.auth, users: service?.users, audit: service?.audit, jobs: service?.jobs, metrics, readiness: parts.readiness, drain, close };
    if (holds.controller) return { ...(await buildControllerLayer(parts, shared, service?.apis ?? [])), ...held };
    const apis: LayerApis = holds.repository ? { repositories } : { services: service?.apis ?? [] };
    return { ...buildLayerServer(parts, apis), ...held };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * The bootstrap administrator, held to what registration would accept (openapi.yaml's
 * RegisterRequest, as the RPC facade checks it, and the breached-password list) before it is
 * created or restored: the account was created with any password at all (helper 95 logged in as
 * `a`), and a common one stopped the start with a stack trace naming no variable. The start now
 * stops with a ConfigError naming each variable.
 */
async function checkBootstrapAdmin(admin: NonNullable<Config['bootstrapAdmin']>, passwords: PasswordHasher): Promise<void> {
  const { validator } = await loadContract();
  const variables: Record<string, string> = { username: 'ADMIN_USERNAME', email: 'ADMIN_EMAIL', password: 'ADMIN_PASSWORD' };
  const problems: string[] = [];
  const collect = (check: () => void) => {
    try {
      check();
    } catch (error) {
      if (!(error instanceof ValidationError)) throw error;
      for (const [field, message] of Object.entries(error.details ?? {})) problems.push(`${variables[field] ?? field} ${message}`);
    }
  };
  collect(() => validator.check(RegisterRequestSchema, create(RegisterRequestSchema, { username: admin.username, email: admin.email, password: admin.password })));
  collect(() => passwords.acceptable(admin.password));
  if (problems.length > 0)
    throw new ConfigError(`The bootstrap administrator must be an account registration would accept:\n${problems.map((problem) => `  ${problem}`).join('\n')}`);
}

/** How often a service layer tries again to reach its repository layer for the bootstrap administrator. */
const BOOTSTRAP_RETRY_MS = 1_000;

/**
 * Runs `ensure` every BOOTSTRAP_RETRY_MS until the repository layer answers it; returns what
 * stops the retries (at shutdown). A value the check refuses (a ConfigError) is logged as an
 * error and not tried again: the process serves on, as without the variables.
 */
function ensureWhenReachable(ensure: () => Promise<void>, logger: Logger): () => void {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const attempt = () => {
    ensure().then(
      () => logger.info('bootstrap administrator checked, the repository layer answering'),
      (error: unknown) => {
        if (stopped) return;
        if (error instanceof UnavailableError) timer = setTimeout(attempt, BOOTSTRAP_RETRY_MS);
        else logger.error({ err: error instanceof Error ? error.message : String(error) }, 'bootstrap administrator not checked');
      },
    );
  };
  timer = setTimeout(attempt, BOOTSTRAP_RETRY_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * openapi.yaml, parsed as JSON (a date stays a string, as the REST validator's own loader parsed
 * it), and the RPC facade's validator over it: read once per process, by the first that needs
 * them (the bootstrap check, the public facades). The validator compiles each message's rules at
 * its first use and keeps them; the document is never changed (the REST validator gets a copy).
 */
let contract: Promise<{ openapi: OpenApiComponents; validator: RequestValidator }> | undefined;
function loadContract(): Promise<{ openapi: OpenApiComponents; validator: RequestValidator }> {
  contract ??= readFile(OPENAPI_PATH, 'utf8').then((text) => {
    const openapi = parseYaml(text, { schema: JSON_SCHEMA }) as OpenApiComponents;
    return { openapi, validator: new RequestValidator(openapi) };
  });
  return contract;
}

/** What every layer builder of one process shares. */
interface ProcessParts {
  config: Config;
  logger: Logger;
  metrics: Metrics | undefined;
  tracing: Tracing | undefined;
  /** Run in reverse order by close(). */
  closers: (() => Promise<void> | void)[];
  /** What `/ready` and the gRPC health service check; each builder adds what its layer needs. */
  readiness: Record<string, ReadinessCheck>;
  health: HealthWatchOptions;
  /** Told, when the process starts to drain, by when the shutdown will cut what is open. */
  onDrain: ((finishBy: number) => void)[];
}

/** The state every process of a deployment shares through Redis, or this process's own without it. */
interface SharedState {
  cache: Cache;
  redis: Redis | undefined;
  /** Login and rate-limit counters in Redis; undefined without Redis (then the repository layer keeps them). */
  counters: CounterStore | undefined;
  keyPrefix: string;
  /** Resolves once Redis has answered (or was given up on at start-up); nothing uses the cache before. */
  ready: Promise<void>;
}

/** A typed client's transport to a layer below, as the deployment configures internal calls. */
function transportTo(parts: ProcessParts, target: string, urls: readonly string[]): Transport {
  const { deployment } = parts.config;
  return createLayerTransport({
    target,
    urls,
    protocol: deployment.protocol === 'http' ? 'http' : 'grpc',
    timeoutMs: deployment.internalTimeoutMs,
    retries: deployment.internalRetries,
    secret: deployment.internalSecret,
    logger: parts.logger,
    metrics: parts.metrics,
    tracing: parts.tracing,
  });
}

/**
 * With REDIS_URL, cache, counters and jobs are shared by every process; without it they live in
 * the process that holds the repository layer (counters reach it over its API). Redis connects
 * while the database is opened and its migrations are checked (see `ready`).
 */
function connectSharedState(parts: ProcessParts): SharedState {
  const { config, logger, metrics, tracing } = parts;
  let cache: Cache = new MemoryCache();
  let redis: Redis | undefined;
  let redisCache: RedisCache | undefined;
  let ready: Promise<void> = Promise.resolve();
  if (config.redis !== undefined) {
    redis = createRedisClient({
      url: config.redis.url,
      logger,
      name: 'arcana-cache',
      // Invalidations may have been lost while Redis was unreachable.
      onReconnect: () => void redisCache?.flush(),
    });
    const client = redis;
    parts.closers.push(() => client.disconnect());
    redisCache = new RedisCache(redis, `${config.redis.keyPrefix}cache:`, logger);
    cache = redisCache;
    ready = waitUntilReady(redis, 3_000).then((answered) => {
      if (!answered) logger.warn('redis not reachable at start-up; serving from the database');
    });
  }
  const keyPrefix = config.redis?.keyPrefix ?? '';
  if (metrics !== undefined) cache = countingCache(cache, metrics);
  if (tracing !== undefined) cache = tracedCache(cache, tracing, redis === undefined ? 'memory' : 'redis');
  return { cache, redis, counters: redis === undefined ? undefined : new RedisCounterStore(redis, `${keyPrefix}counter:`), keyPrefix, ready };
}

/** The repository layer: the database here, or typed clients of the repository processes. */
async function buildRepositoryLayer(parts: ProcessParts, shared: SharedState, holds: LayerHoldings): Promise<{ database?: Database; repositories?: Repositories }> {
  const { config, logger, metrics, tracing } = parts;
  const { cache } = shared;
  if (holds.repository) {
    const db = await createDatabase(config.database);
    metrics?.counterFrom('arcana_db_queries_total', 'Queries this process sent to the database', () => db.queryCount());
    const poolUse = db.poolUse;
    if (poolUse !== undefined) metrics?.databasePool(poolUse);
    parts.closers.push(() => db.close());
    const applied = await applyMigrations(db, db.dialect.name === 'mysql' ? MYSQL_MIGRATIONS_PATH : MIGRATIONS_PATH, (abandoned) =>
      logger.warn({ migrations: abandoned }, 'migrations an earlier start left unfinished were rolled back by the database; applying them again'),
    );
    if (applied.length > 0) logger.info({ migrations: applied }, 'applied database migrations');
    // With tracing, each database operation is a span named after the repository method. And
    // none starts for a request out of time or abandoned, as across a layer boundary (request-time.ts).
    const served = <R extends object>(repository: R, name: string): R =>
      withinRequestTime(tracing === undefined ? repository : tracedRepository(repository, name, tracing, db.kind));
    parts.readiness.database = sharedCheck(async () => {
      // A pool whose every connection is in use is busy, not down: 40 logins waiting on one locked
      // row held all ten, the probe's query waited behind them and answered 503 after 2 s, and an
      // orchestrator would have pulled every replica for one row (helper 98). Asked only when a
      // connection is free; a database that went away frees them (each fails), and is found then.
      const use = db.poolUse?.();
      if (use?.idle === 0 && use.total >= use.max) return;
      await db.prisma.$queryRaw`SELECT 1`;
    });
    // Listings count every match of their filter: a few at once, so that a crowd of expensive
    // searches cannot hold every pooled connection (README, Security).
    // PGlite has one connection, whose statements take turns (database.ts, takeTurns): one
    // listing at a time there (unless set), so that a point read or a login waits behind one 70 ms
    // page rather than eight (helper 149).
    const lists = new WorkGate({ ...config.listQueries, concurrency: config.listQueries.concurrency ?? (db.kind === 'pglite' ? 1 : 8), estimateMs: 20 });
    // Lists waiting when the shutdown begins that could not be read before its cut are refused then.
    parts.onDrain.push((finishBy) => lists.finishBy(finishBy));
    metrics?.gauge('arcana_list_queries_running', 'pages of users or audit events being read from the database now', () => lists.running);
    metrics?.gauge('arcana_list_queries_waiting', 'pages of users or audit events waiting for a turn (LIST_QUERY_QUEUE_MAX)', () => lists.waiting);
    // Writes that lock a user's row take turns per user before they take a pooled connection, so
    // that writes waiting on one locked row cannot hold the whole pool (helper 173).
    const rows = new RowTurns(config.database.lockTimeoutMs);
    return {
      database: db,
      repositories: {
        users: new CachedUserRepository(served(new PrismaUserRepository(db, lists, rows), 'UserRepository'), cache, config.cacheTtlSeconds),
        tokens: new CachedTokenRepository(served(new PrismaTokenRepository(db.prisma, db.dialect, rows), 'TokenRepository'), cache, config.cacheTtlSeconds),
        audit: served(new PrismaAuditRepository(db.prisma, lists), 'AuditRepository'),
        counters: shared.counters ?? new MemoryCounterStore(Date.now, { onFull: warnCountersFull(logger, 'login and rate-limit') }),
        idempotency: served(new PrismaIdempotencyRepository(db.prisma), 'IdempotencyRepository'),
      },
    };
  }
  if (!(holds.auth || holds.users)) return {};
  const transport = transportTo(parts, 'repository', config.deployment.repositoryUrls);
  const remoteUsers = new RemoteUserRepository(createClient(UserRepositoryService, transport));
  const remoteTokens = new RemoteTokenRepository(createClient(TokenRepositoryService, transport));
  parts.readiness.repository = downstreamReady(transport);
  // With a shared cache, cache-aside also sits in front of the remote repository, so a warm
  // session or profile read costs a Redis GET instead of a call to the repository layer; the
  // keys and invalidations are the ones the repository process uses. Without Redis each
  // service process would hold its own copy, which a write through another process (a
  // suspension, a logout) could not invalidate, so then only the repository process caches.
  const shareCache = shared.redis !== undefined;
  return {
    repositories: {
      users: shareCache ? new CachedUserRepository(remoteUsers, cache, config.cacheTtlSeconds) : remoteUsers,
      tokens: shareCache ? new CachedTokenRepository(remoteTokens, cache, config.cacheTtlSeconds) : remoteTokens,
      audit: new RemoteAuditRepository(createClient(AuditRepositoryService, transport)),
      counters: shared.counters ?? new RemoteCounterStore(createClient(CounterStoreService, transport)),
      idempotency: new RemoteIdempotencyRepository(createClient(IdempotencyRepositoryService, transport)),
    },
  };
}

/** The service layer this process holds: its use cases, its API and its background jobs. */
interface ServiceLayer {
  auth?: AuthUseCases | undefined;
  users?: UserUseCases | undefined;
  audit?: AuditUseCases | undefined;
  jobs: JobRunner;
  /** The public services, implemented over these use cases: what every facade calls. */
  apis: InProcessService[];
}

/** The use cases over `repositories`, the jobs they start and the service layer's API. */
async function buildServiceLayer(parts: ProcessParts, shared: SharedState, repositories: Repositories, holds: LayerHoldings): Promise<ServiceLayer> {
  const { config, logger, metrics } = parts;
  // One bcrypt hash at cost 12 takes about 210 ms of one core on the reference machine; each
  // round doubles it. The gate's estimate adapts to what it measures from the first hash on.
  const hashGate = new WorkGate({ ...config.passwordHashing, estimateMs: 210 * 2 ** (config.bcryptRounds - 12) });
  parts.onDrain.push((finishBy) => hashGate.finishBy(finishBy));
  const passwords = new PasswordHasher(config.bcryptRounds, await loadCommonPasswords(), hashGate);
  metrics?.gauge('arcana_password_hashes_running', 'bcrypt hashes and comparisons running now', () => hashGate.running);
  metrics?.gauge('arcana_password_hashes_waiting', 'bcrypt hashes and comparisons waiting for a slot (PASSWORD_HASH_QUEUE_MAX)', () => hashGate.waiting);
  // Off the path to listening: a login that comes before the throwaway hash is ready waits
  // for the same computation rather than starting another.
  void passwords.warmUp().catch((error: unknown) => logger.warn({ err: String(error) }, 'bcrypt warm-up failed'));
  const jobs = await createJobRunner({
    redis: config.redis === undefined ? undefined : { url: config.redis.url, prefix: `${shared.keyPrefix}jobs` },
    logger,
    auditRepository: repositories.audit,
    tokenRepository: repositories.tokens,
    idempotencyRepository: repositories.idempotency,
    purgeIntervalMs: config.sessionPurge.intervalMs,
    purgeRetentionMs: config.sessionPurge.retentionMs,
    auditRetentionMs: config.auditRetentionMs,
    onJobFailed: metrics === undefined ? undefined : (queue) => metrics.jobFailed(queue),
  });
  metrics?.queueDepth(() => jobs.queueDepth());
  parts.closers.push(() => jobs.close());
  const throttle = new LoginThrottle({ counters: repositories.counters, ...config.login });
  const devices = new DeviceTokens({ secret: config.jwt.secret, ttlSeconds: config.login.knownDeviceTtlSeconds });
  const idempotency = new IdempotentRequests({ records: repositories.idempotency, secret: config.jwt.secret });
  // Every audited security event is also counted (logins by outcome, lockouts, token reuse).
  const auditLog: AuditLog =
    metrics === undefined
      ? jobs.audit
      : {
          record: (event: AuditEventInput) => {
            metrics.securityEvent(event.type, event.details?.reason);
            jobs.audit.record(event);
          },
          withWrite: async (event, write) => {
            const written = await jobs.audit.withWrite(event, write);
            if (event !== undefined) metrics.securityEvent(event.type, event.details?.reason);
            return written;
          },
        };
  const deps = { users: repositories.users, tokens: repositories.tokens, passwords, throttle, devices, audit: auditLog, idempotency, counters: repositories.counters };
  // Every service process checks the access tokens of the calls it serves (with its cache), so
  // the auth use cases exist wherever the service layer runs; only the auth service serves them.
  const codec = new TokenCodec({
    secret: config.jwt.secret,
    issuer: config.jwt.issuer,
    audience: config.jwt.audience,
    accessTtlSeconds: config.jwt.accessTtlSeconds,
    refreshTtlSeconds: config.jwt.refreshTtlSeconds,
  });
  const authenticator = new AuthUseCases({
    ...deps,
    codec,
    auditEvents: repositories.audit,
    sessionLifetimeSeconds: config.sessionLifetimeSeconds,
    sessionsPerUser: config.sessionsPerUser,
  });
  const auth = holds.auth ? authenticator : undefined;
  let users: UserUseCases | undefined;
  let audit: AuditUseCases | undefined;
  if (holds.users) {
    users = new UserUseCases(deps);
    audit = new AuditUseCases({ events: repositories.audit });
    if (config.bootstrapAdmin !== undefined) {
      const admin = config.bootstrapAdmin;
      const ensure = () =>
        ensureBootstrapAdmin(admin, {
          users: repositories.users,
          tokens: repositories.tokens,
          passwords,
          audit: jobs.audit,
          logger,
          acceptable: () => checkBootstrapAdmin(admin, passwords),
        });
      try {
        await ensure();
      } catch (error) {
        // A service layer starting before its repository layer (pods start in no order) exited 1
        // and crash-looped with back-off for the whole rollout (helper 164). It serves, not ready
        // until the repository answers, and makes the account once it does.
        if (holds.repository || !(error instanceof UnavailableError)) throw error;
        logger.warn('the repository layer is not reachable yet; the bootstrap administrator is checked once it is');
        parts.closers.push(ensureWhenReachable(ensure, logger));
      }
    }
  }
  return { auth, users, audit, jobs, apis: createServiceApis({ auth, users, audit, authenticator }) };
}

/**
 * The controller layer: the public facades, over the service layer's API: its implementations in
 * this process (`local`), or the service processes' over the network. The facades cannot tell.
 */
async function buildControllerLayer(parts: ProcessParts, shared: SharedState, local: InProcessService[]): Promise<Pick<Application, 'http' | 'http2' | 'rest' | 'browserOrigins'>> {
  const { config, readiness } = parts;
  let services: InProcessService[];
  let clients: ServiceClients;
  if (local.length > 0) {
    services = local;
    const transport = createInProcessTransport(local);
    clients = {
      auth: createClient(AuthServiceDescriptor, transport),
      users: createClient(UserServiceDescriptor, transport),
      audit: createClient(AuditServiceDescriptor, transport),
    };
  } else {
    const { mode, serviceUrls, authServiceUrls, userServiceUrls } = config.deployment;
    const authTransport = transportTo(parts, mode === 'layered' ? 'service' : 'auth-service', mode === 'layered' ? serviceUrls : authServiceUrls);
    const userTransport = mode === 'layered' ? authTransport : transportTo(parts, 'user-service', userServiceUrls);
    services = [
      forwardingService(AuthServiceDescriptor, authTransport),
      forwardingService(UserServiceDescriptor, userTransport),
      forwardingService(AuditServiceDescriptor, userTransport),
    ];
    clients = {
      auth: createClient(AuthServiceDescriptor, authTransport),
      users: createClient(UserServiceDescriptor, userTransport),
      audit: createClient(AuditServiceDescriptor, userTransport),
    };
    if (mode === 'layered') {
      readiness.service = downstreamReady(authTransport);
    } else {
      readiness['auth-service'] = downstreamReady(authTransport);
      readiness['user-service'] = downstreamReady(userTransport);
    }
  }
  return createPublicFacades(config, parts.logger, {
    services,
    clients,
    counters: shared.counters,
    readiness,
    health: parts.health,
    metrics: parts.metrics,
    tracing: parts.tracing,
  });
}

/** An internal layer process: its API for the layer above, plus /health and /ready. */
function buildLayerServer(parts: ProcessParts, apis: LayerApis): Pick<Application, 'http' | 'http2' | 'vouch'> {
  const { config, logger, readiness } = parts;
  const layerRpc = {
    routes: createLayerRoutes(apis, readiness, parts.health),
    // The caller of the public request, as the controller layer sent it (see src/rpc/caller.ts).
    contextValues: layerCallValues,
    interceptors: [layerContextInterceptor(logger, parts.tracing), layerServerErrorInterceptor(logger)],
    admit: internalAuthGate(config.deployment.internalSecret),
    // Pages of rows are larger than public requests; this is a trusted peer, not a client.
    readMaxBytes: 16 * 1024 * 1024,
    logger,
  };
  const probes = express();
  probes.disable('x-powered-by');
  probes.use(createSystemRoutes({ info: { name: 'arcana-cloud', version: packageJson.version, deploymentMode: config.deployment.mode }, readiness }));
  probes.use(notFoundHandler);
  probes.use(createErrorHandler({ logger, exposeInternals: false }));
  const rpcOnly = createRpcNodeHandler(layerRpc);
  const rpcOrProbes = createRpcNodeHandler({ ...layerRpc, fallback: (req, res) => void probes(req as IncomingMessage, res as ServerResponse) });
  const secret = config.deployment.internalSecret;
  return { http: rpcOrProbes, http2: rpcOnly, vouch: secret === undefined ? undefined : presentsSecret(secret) };
}

/** The public REST and RPC facades over the service layer, with CORS and rate limits. */
async function createPublicFacades(
  config: Config,
  logger: Logger,
  deps: {
    /** The service layer's API as the public RPC router serves it. */
    services: readonly InProcessService[];
    /** The same, as the REST facade calls it. */
    clients: ServiceClients;
    counters: CounterStore | undefined;
    readiness: Record<string, ReadinessCheck>;
    health: HealthWatchOptions;
    metrics: Metrics | undefined;
    tracing: Tracing | undefined;
  },
): Promise<Pick<Application, 'http' | 'http2' | 'rest' | 'browserOrigins'>> {
  const { readiness, metrics } = deps;
  // One limiter for both facades: a client's budget is the same whichever protocol it uses. If
  // Redis fails it falls back to counting in this process rather than refusing the API.
  const rateLimiter = config.rateLimit.enabled
    ? new FixedWindowRateLimiter(
        deps.counters ?? new MemoryCounterStore(Date.now, { onFull: warnCountersFull(logger, 'rate-limit') }),
        { windowMs: config.rateLimit.windowMs, max: config.rateLimit.max, prefix: 'api:', onStoreFailure: 'open' },
        new MemoryCounterStore(Date.now, { onFull: warnCountersFull(logger, 'rate-limit fallback') }),
      )
    : undefined;
  const { exposeInternals } = config;
  // One client-address rule for every protocol: REST and RPC get the same resolver.
  const resolveClient = createClientAddressResolver(config.server.trustProxy);
  const traceTrusted = createPeerTrust(config.server.traceTrustedProxies);

  // One document for both facades; the REST validator gets its own copy, which it rewrites in place.
  const { openapi, validator } = await loadContract();
  const rest = createRestApp({
    metrics: deps.metrics,
    tracing: deps.tracing,
    apiSpecPath: OPENAPI_PATH,
    apiSpec: structuredClone(openapi),
    services: deps.clients,
    logger,
    rateLimiter,
    trustProxy: config.server.trustProxy,
    resolveClient,
    traceTrusted,
    bodyLimitBytes: config.server.bodyLimitBytes,
    validateResponses: config.openapi.validateResponses,
    exposeInternals,
    info: { name: 'arcana-cloud', version: packageJson.version, deploymentMode: config.deployment.mode },
    readiness,
  });

  const rpcOptions = {
    routes: createConnectRoutes({ services: deps.services, readiness, health: deps.health }),
    interceptors: [requestContextInterceptor(logger, metrics, deps.tracing), errorInterceptor({ logger, exposeInternals }), validationInterceptor(validator)],
    contextValues: createContextValuesFor(resolveClient, traceTrusted),
    readMaxBytes: config.server.bodyLimitBytes,
    // Before the body is read or decoded: see rpc-node-handler.ts.
    admit: rateLimitGate(rateLimiter),
    strict: true,
    logger,
    metrics,
  };
  // Over HTTP/1.1 whatever is not an RPC path falls through to the REST app. This adapter only
  // ever sees HTTP/1.1 requests (see `http` below), hence the narrowing casts.
  const rpcOrRest = createRpcNodeHandler({
    ...rpcOptions,
    fallback: (req, res) => void rest(req as IncomingMessage, res as ServerResponse),
  });
  const rpcOnly = createRpcNodeHandler(rpcOptions);

  // Browsers call both facades; the policy allows Connect's and gRPC-Web's headers as well as
  // the REST ones, and exposes the headers clients read.
  const corsPolicy = cors({
    origin: config.corsOrigins,
    credentials: true,
    methods: [...new Set([...connectCors.allowedMethods, 'GET', 'POST', 'PUT', 'DELETE'])],
    // If-Match / If-None-Match and ETag: a browser's REST client guards its writes by version.
    allowedHeaders: [...connectCors.allowedHeaders, 'Authorization', 'X-Request-Id', 'X-Device-Token', 'Idempotency-Key', 'If-Match', 'If-None-Match'],
    exposedHeaders: [
      ...connectCors.exposedHeaders,
      'X-Request-Id',
      'WWW-Authenticate',
      'RateLimit-Limit',
      'RateLimit-Remaining',
      'RateLimit-Reset',
      'Retry-After',
      'Idempotent-Replayed',
      'ETag',
    ],
    maxAge: 7200,
  });

  // Set first, on every answer over HTTP/1.1, where browsers reach the server: a route that needs
  // more (the console's and the docs' own CSP) sets its own over them. Not over h2c, which no
  // browser speaks (HTTP/2 in a browser is TLS, through a proxy that should add them): there they
  // cost gRPC GetUser 11 % of its rate (7 497 and 7 929 req/s before, 6 713 and 7 003 with them).
  const secure = securityHeaders();
  return {
    http: (req, res) => {
      secure(res);
      // A request answered before its body was read (too large, say) would leave the rest of
      // the body on a keep-alive connection, where the next request would stall behind it:
      // such an answer says `connection: close`, so the client opens a fresh connection. A
      // request without a body has nothing left unread, though Node marks it complete only
      // after handing it over: a CORS preflight answered at once kept closing its connection
      // (helper 110).
      const writeHead = res.writeHead.bind(res);
      res.writeHead = ((...args: Parameters<typeof writeHead>) => {
        if (!req.complete && hasBody(req) && !res.headersSent) res.setHeader('connection', 'close');
        return writeHead(...args);
      }) as typeof res.writeHead;
      corsPolicy(req, res, () => rpcOrRest(req, res));
    },
    http2: rpcOnly,
    rest,
    browserOrigins: config.corsOrigins,
  };
}

/** What a full in-process counter store tells the operator (at most once a minute). */
function warnCountersFull(logger: Logger, what: string): (maxEntries: number) => void {
  return (maxEntries) =>
    logger.warn(
      { maxEntries },
      `in-process ${what} counters are full: the oldest live windows are being dropped, so limits are weaker than configured; share counters through REDIS_URL`,
    );
}
