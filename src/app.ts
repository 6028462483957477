// The composition root: the one place that builds repositories → services → facades for this
// process. Nothing is created at import time; everything is passed down explicitly.
import { cors as connectCors } from '@connectrpc/connect';
import cors from 'cors';
import type { Express } from 'express';
import { load as parseYaml } from 'js-yaml';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { join } from 'node:path';
import packageJson from '../package.json' with { type: 'json' };
import type { Config } from './config.ts';
import { createRestApp } from './controllers/rest/rest-app.ts';
import { createConnectRoutes } from './controllers/rpc/connect-routes.ts';
import {
  errorInterceptor,
  rateLimitInterceptor,
  requestContextInterceptor,
  validationInterceptor,
} from './controllers/rpc/interceptors.ts';
import { RequestValidator, type OpenApiComponents } from './controllers/rpc/request-validator.ts';
import { contextValuesFor } from './controllers/rpc/rpc-context.ts';
import { createRpcNodeHandler } from './controllers/rpc/rpc-node-handler.ts';
import { createDatabase, type Database } from './infrastructure/database/database.ts';
import { applyMigrations } from './infrastructure/database/migrations.ts';
import type { Logger } from './infrastructure/logger.ts';
import { MemoryCache, RedisCache, type Cache } from './infrastructure/cache.ts';
import { FixedWindowRateLimiter, MemoryCounterStore, RedisCounterStore } from './infrastructure/rate-limiter.ts';
import { createRedisClient, waitUntilReady } from './infrastructure/redis/redis-client.ts';
import { PasswordHasher } from './infrastructure/security/password-hasher.ts';
import { TokenCodec } from './infrastructure/security/token-codec.ts';
import { CachedTokenRepository } from './repositories/cached-token-repository.ts';
import { CachedUserRepository } from './repositories/cached-user-repository.ts';
import { PrismaTokenRepository } from './repositories/token-repository.ts';
import { PrismaUserRepository } from './repositories/user-repository.ts';
import { LoginThrottle } from './services/login-throttle.ts';
import { AuthUseCases, type AuthService } from './services/auth-use-cases.ts';
import { ensureBootstrapAdmin } from './services/bootstrap-admin.ts';
import { UserUseCases, type UserService } from './services/user-use-cases.ts';
import { AuditUseCases, type AuditService } from './services/audit-use-cases.ts';
import { PrismaAuditRepository } from './repositories/audit-repository.ts';
import { createJobRunner, type JobRunner } from './jobs/job-runner.ts';

const ROOT = join(import.meta.dirname, '..');
export const OPENAPI_PATH = join(ROOT, 'openapi.yaml');
export const MIGRATIONS_PATH = join(ROOT, 'prisma', 'migrations');

export interface Application {
  /** HTTP/1.1 requests: REST, plus Connect and gRPC-Web RPCs. */
  http: (req: IncomingMessage, res: ServerResponse) => void;
  /** HTTP/2 requests: gRPC, Connect and gRPC-Web RPCs. */
  http2: (req: Http2ServerRequest, res: Http2ServerResponse) => void;
  rest: Express;
  database: Database;
  auth: AuthService;
  users: UserService;
  audit: AuditService;
  jobs: JobRunner;
  close(): Promise<void>;
}

/** Opens the database, applies pending migrations, wires the layers and returns the handlers. */
export async function createApplication(config: Config, logger: Logger): Promise<Application> {
  const database = await createDatabase(config.database);
  // With REDIS_URL, cache and counters are shared by every process; without it they live in
  // this process, which is all a single embedded-database instance needs.
  let cache: Cache = new MemoryCache();
  const redis =
    config.redis === undefined
      ? undefined
      : createRedisClient({
          url: config.redis.url,
          logger,
          name: 'arcana-cache',
          // Invalidations may have been lost while Redis was unreachable.
          onReconnect: () => void (cache instanceof RedisCache ? cache.flush() : undefined),
        });
  let jobs: JobRunner | undefined;
  const close = async () => {
    await jobs?.close();
    redis?.disconnect();
    await database.close();
  };
  try {
    const applied = await applyMigrations(database, MIGRATIONS_PATH);
    if (applied.length > 0) logger.info({ migrations: applied }, 'applied database migrations');

    const prefix = config.redis?.keyPrefix ?? '';
    if (redis !== undefined) {
      cache = new RedisCache(redis, `${prefix}cache:`, logger);
      if (!(await waitUntilReady(redis, 3_000))) logger.warn('redis not reachable at start-up; serving from the database');
    }
    const counters = redis === undefined ? new MemoryCounterStore() : new RedisCounterStore(redis, `${prefix}counter:`);
    const users = new CachedUserRepository(new PrismaUserRepository(database.prisma), cache, config.cacheTtlSeconds);
    const tokens = new CachedTokenRepository(new PrismaTokenRepository(database.prisma), cache, config.cacheTtlSeconds);
    const passwords = new PasswordHasher(config.bcryptRounds);
    await passwords.warmUp();
    const codec = new TokenCodec({
      secret: config.jwt.secret,
      issuer: config.jwt.issuer,
      audience: config.jwt.audience,
      accessTtlSeconds: config.jwt.accessTtlSeconds,
      refreshTtlSeconds: config.jwt.refreshTtlSeconds,
    });
    const auditRepository = new PrismaAuditRepository(database.prisma);
    jobs = await createJobRunner({
      redis: config.redis === undefined ? undefined : { url: config.redis.url, prefix: `${prefix}jobs` },
      logger,
      auditRepository,
      tokenRepository: tokens,
      purgeIntervalMs: config.sessionPurge.intervalMs,
      purgeRetentionMs: config.sessionPurge.retentionMs,
    });
    const throttle = new LoginThrottle({ counters, ...config.login });
    const auth = new AuthUseCases({ users, tokens, passwords, codec, throttle, audit: jobs.audit });
    const userUseCases = new UserUseCases({ users, tokens, passwords, throttle, audit: jobs.audit });
    const audit = new AuditUseCases({ events: auditRepository });

    if (config.bootstrapAdmin !== undefined) {
      await ensureBootstrapAdmin(config.bootstrapAdmin, { users, passwords, logger });
    }

    // One limiter for both facades: a client's budget is the same whichever protocol it uses. If
    // Redis fails it falls back to counting in this process rather than refusing the API.
    const rateLimiter = config.rateLimit.enabled
      ? new FixedWindowRateLimiter(
          counters,
          { windowMs: config.rateLimit.windowMs, max: config.rateLimit.max, prefix: 'api:', onStoreFailure: 'open' },
          new MemoryCounterStore(),
        )
      : undefined;
    const readiness = {
      database: async () => {
        await database.prisma.$queryRaw`SELECT 1`;
      },
    };
    const exposeInternals = config.nodeEnv === 'development';

    const rest = createRestApp({
      apiSpecPath: OPENAPI_PATH,
      auth,
      users: userUseCases,
      audit,
      logger,
      rateLimiter,
      trustProxy: config.server.trustProxy,
      bodyLimitBytes: config.server.bodyLimitBytes,
      validateResponses: config.openapi.validateResponses,
      exposeInternals,
      info: { name: 'arcana-cloud', version: packageJson.version, deploymentMode: config.deployment.mode },
      readiness,
    });

    const openapi = parseYaml(await readFile(OPENAPI_PATH, 'utf8')) as OpenApiComponents;
    const rpcOptions = {
      routes: createConnectRoutes({ auth, users: userUseCases, audit, readiness }),
      interceptors: [
        requestContextInterceptor(logger),
        errorInterceptor({ logger, exposeInternals }),
        ...(rateLimiter === undefined ? [] : [rateLimitInterceptor(rateLimiter)]),
        validationInterceptor(new RequestValidator(openapi)),
      ],
      contextValues: contextValuesFor,
      readMaxBytes: config.server.bodyLimitBytes,
    };
    // Over HTTP/1.1 whatever is not an RPC path falls through to the REST app. This adapter only
    // ever sees HTTP/1.1 requests (see `http` below), hence the narrowing casts.
    const rpcOrRest = createRpcNodeHandler({
      ...rpcOptions,
      fallback: (req, res) => rest(req as IncomingMessage, res as ServerResponse),
    });
    const rpcOnly = createRpcNodeHandler(rpcOptions);

    // Browsers call both facades; the policy allows Connect's and gRPC-Web's headers as well as
    // the REST ones, and exposes the headers clients read.
    const corsPolicy = cors({
      origin: config.corsOrigins,
      credentials: true,
      methods: [...new Set([...connectCors.allowedMethods, 'GET', 'POST', 'PUT', 'DELETE'])],
      allowedHeaders: [...connectCors.allowedHeaders, 'Authorization', 'X-Request-Id'],
      exposedHeaders: [
        ...connectCors.exposedHeaders,
        'X-Request-Id',
        'RateLimit-Limit',
        'RateLimit-Remaining',
        'RateLimit-Reset',
        'Retry-After',
      ],
      maxAge: 7200,
    });

    return {
      http: (req, res) => {
        // A request answered before its body was read (too large, say) would leave the rest of
        // the body on a keep-alive connection, where the next request would stall behind it:
        // such an answer says `connection: close`, so the client opens a fresh connection.
        const writeHead = res.writeHead.bind(res);
        res.writeHead = ((...args: Parameters<typeof writeHead>) => {
          if (!req.complete && !res.headersSent) res.setHeader('connection', 'close');
          return writeHead(...args);
        }) as typeof res.writeHead;
        corsPolicy(req, res, () => rpcOrRest(req, res));
      },
      http2: rpcOnly,
      rest,
      database,
      auth,
      users: userUseCases,
      audit,
      jobs,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
