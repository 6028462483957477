// The composition root: the one place that builds repositories → services → facades for this
// process. Nothing is created at import time; everything is passed down explicitly.
import type { Express } from 'express';
import { join } from 'node:path';
import packageJson from '../package.json' with { type: 'json' };
import type { Config } from './config.ts';
import { createRestApp } from './controllers/rest/rest-app.ts';
import { createDatabase, type Database } from './infrastructure/database/database.ts';
import { applyMigrations } from './infrastructure/database/migrations.ts';
import type { Logger } from './infrastructure/logger.ts';
import { MemoryRateLimiter } from './infrastructure/rate-limiter.ts';
import { PasswordHasher } from './infrastructure/security/password-hasher.ts';
import { TokenCodec } from './infrastructure/security/token-codec.ts';
import { PrismaTokenRepository } from './repositories/token-repository.ts';
import { PrismaUserRepository } from './repositories/user-repository.ts';
import { AuthUseCases, type AuthService } from './services/auth-use-cases.ts';
import { ensureBootstrapAdmin } from './services/bootstrap-admin.ts';
import { UserUseCases, type UserService } from './services/user-use-cases.ts';

const ROOT = join(import.meta.dirname, '..');
export const OPENAPI_PATH = join(ROOT, 'openapi.yaml');
export const MIGRATIONS_PATH = join(ROOT, 'prisma', 'migrations');

export interface Application {
  http: Express;
  database: Database;
  auth: AuthService;
  users: UserService;
  close(): Promise<void>;
}

/** Opens the database, applies pending migrations, wires the layers and returns the app. */
export async function createApplication(config: Config, logger: Logger): Promise<Application> {
  const database = await createDatabase(config.database);
  try {
    const applied = await applyMigrations(database, MIGRATIONS_PATH);
    if (applied.length > 0) logger.info({ migrations: applied }, 'applied database migrations');

    const users = new PrismaUserRepository(database.prisma);
    const tokens = new PrismaTokenRepository(database.prisma);
    const passwords = new PasswordHasher(config.bcryptRounds);
    await passwords.warmUp();
    const codec = new TokenCodec({
      secret: config.jwt.secret,
      issuer: config.jwt.issuer,
      audience: config.jwt.audience,
      accessTtlSeconds: config.jwt.accessTtlSeconds,
      refreshTtlSeconds: config.jwt.refreshTtlSeconds,
    });
    const auth = new AuthUseCases({ users, tokens, passwords, codec });
    const userUseCases = new UserUseCases({ users, tokens, passwords });

    if (config.bootstrapAdmin !== undefined) {
      await ensureBootstrapAdmin(config.bootstrapAdmin, { users, passwords, logger });
    }

    const http = createRestApp({
      apiSpecPath: OPENAPI_PATH,
      auth,
      users: userUseCases,
      logger,
      rateLimiter: config.rateLimit.enabled ? new MemoryRateLimiter(config.rateLimit) : undefined,
      corsOrigins: config.corsOrigins,
      trustProxy: config.server.trustProxy,
      bodyLimit: config.server.bodyLimit,
      validateResponses: config.openapi.validateResponses,
      exposeInternals: config.nodeEnv === 'development',
      info: { name: 'arcana-cloud', version: packageJson.version, deploymentMode: config.deployment.mode },
      readiness: {
        database: async () => {
          await database.prisma.$queryRaw`SELECT 1`;
        },
      },
    });

    return { http, database, auth, users: userUseCases, close: () => database.close() };
  } catch (error) {
    await database.close();
    throw error;
  }
}
