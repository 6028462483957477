import compression from 'compression';
import express, { type Express } from 'express';
import * as OpenApiValidator from 'express-openapi-validator';
import helmet from 'helmet';
import type { components } from '../../../gen/openapi/schema.d.ts';
import { compileTrust, type ClientAddressResolver, type TrustProxySetting } from '../../infrastructure/client-address.ts';
import type { Logger } from '../../infrastructure/logger.ts';
import type { RateLimiter } from '../../infrastructure/rate-limiter.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import type { UserService } from '../../services/user-use-cases.ts';
import type { AuditService } from '../../services/audit-use-cases.ts';
import { createAuditRoutes } from './audit-routes.ts';
import { createAuthRoutes } from './auth-routes.ts';
import { createErrorHandler, notFoundHandler } from './error-handler.ts';
import { rateLimit } from './rate-limit-middleware.ts';
import { requestContext } from './request-context.ts';
import { createSystemRoutes, type ReadinessCheck } from './system-routes.ts';
import { createUserRoutes } from './user-routes.ts';

const PROBES = new Set(['/health', '/ready']);

export interface RestAppOptions {
  apiSpecPath: string;
  auth: AuthService;
  users: UserService;
  audit: AuditService;
  logger: Logger;
  rateLimiter: RateLimiter | undefined;
  trustProxy: TrustProxySetting;
  /** The client-address rule, the same instance the RPC facade uses. */
  resolveClient: ClientAddressResolver;
  bodyLimitBytes: number;
  validateResponses: boolean;
  exposeInternals: boolean;
  info: components['schemas']['PublicInfo'];
  readiness: Record<string, ReadinessCheck>;
}

/**
 * The REST facade: spec §5's routes, validated against openapi.yaml, over the service layer.
 * CORS is applied in front of it, shared with the RPC handlers (see src/app.ts).
 */
export function createRestApp(options: RestAppOptions): Express {
  const app = express();
  app.disable('x-powered-by');
  // Express's own view (req.ip, req.secure) follows the same predicate as the edge's resolver.
  app.set('trust proxy', compileTrust(options.trustProxy));

  app.use(requestContext(options.logger, options.resolveClient));
  app.use(helmet());
  app.use(compression());

  if (options.rateLimiter !== undefined) {
    // Probes are exempt: an orchestrator polling them must never be throttled.
    const limit = rateLimit(options.rateLimiter);
    app.use((req, res, next) => (PROBES.has(req.path) ? next() : limit(req, res, next)));
  }

  app.use(express.json({ limit: options.bodyLimitBytes, strict: true }));
  app.use(
    OpenApiValidator.middleware({
      apiSpec: options.apiSpecPath,
      validateRequests: { allowUnknownQueryParameters: false, allErrors: true },
      validateResponses: options.validateResponses,
      validateSecurity: false,
    }),
  );

  app.use(createSystemRoutes({ info: options.info, readiness: options.readiness }));
  app.use('/api/v1/auth', createAuthRoutes(options.auth));
  app.use('/api/v1/users', createUserRoutes(options.users, options.auth));
  app.use('/api/v1/audit-events', createAuditRoutes(options.audit, options.auth));

  app.use(notFoundHandler);
  app.use(createErrorHandler({ logger: options.logger, exposeInternals: options.exposeInternals }));
  return app;
}
