// The serving side of the internal APIs: what a layer process registers, and the interceptor that
// enters each incoming call's context (request id, caller, deadline) for the calls it makes next.
import { Code, ConnectError, type ConnectRouter, type Interceptor, type ServiceImpl } from '@connectrpc/connect';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { DescFile, DescService } from '@bufbuild/protobuf';
import { AuditLayerService, file_arcana_internal_service_v1_audit_layer_service } from '../../gen/proto/arcana/internal/service/v1/audit_layer_service_pb.js';
import { AuthLayerService, file_arcana_internal_service_v1_auth_layer_service } from '../../gen/proto/arcana/internal/service/v1/auth_layer_service_pb.js';
import { UserLayerService, file_arcana_internal_service_v1_user_layer_service } from '../../gen/proto/arcana/internal/service/v1/user_layer_service_pb.js';
import { AuditRepositoryService, file_arcana_internal_repository_v1_audit_repository_service } from '../../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import { CounterStoreService, file_arcana_internal_repository_v1_counter_store_service } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import {
  file_arcana_internal_repository_v1_idempotency_repository_service,
  IdempotencyRepositoryService,
} from '../../gen/proto/arcana/internal/repository/v1/idempotency_repository_service_pb.js';
import { TokenRepositoryService, file_arcana_internal_repository_v1_token_repository_service } from '../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import { UserRepositoryService, file_arcana_internal_repository_v1_user_repository_service } from '../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { file_grpc_health_v1_health, Health } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { file_grpc_reflection_v1_reflection, ServerReflection as ServerReflectionV1 } from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import { file_grpc_reflection_v1alpha_reflection, ServerReflection as ServerReflectionV1alpha } from '../../gen/proto/grpc/reflection/v1alpha/reflection_pb.js';
import { createHealthService, type HealthWatchOptions } from '../controllers/rpc/health-service.ts';
import { createReflectionServices } from '../controllers/rpc/reflection-service.ts';
import type { ReadinessCheck } from '../controllers/rest/system-routes.ts';
import type { Logger } from '../infrastructure/logger.ts';
import { endWithError, type Tracing } from '../infrastructure/tracing.ts';
import { requestIdFrom } from '../infrastructure/request-id.ts';
import type { CounterStore } from '../infrastructure/rate-limiter.ts';
import type { AuditRepository } from '../repositories/audit-repository.ts';
import type { IdempotencyRepository } from '../repositories/idempotency-repository.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import type { UserRepository } from '../repositories/user-repository.ts';
import type { AuditService } from '../services/audit-use-cases.ts';
import type { AuthService } from '../services/auth-use-cases.ts';
import type { UserService } from '../services/user-use-cases.ts';
import { runWithCallContext, timeoutFromHeaders, type IdempotentCall } from './call-context.ts';
import { INTERNAL_IDEMPOTENCY_KEY_HEADER, INTERNAL_REPLAYED_HEADER } from './layer-transport.ts';
import {
  createAuditRepositoryHandler,
  createCounterStoreHandler,
  createIdempotencyRepositoryHandler,
  createTokenRepositoryHandler,
  createUserRepositoryHandler,
} from './repository/repository-handlers.ts';
import { createAuditLayerHandler, createAuthLayerHandler, createUserLayerHandler } from './service/service-handlers.ts';

/** What one process serves to the layer above it. */
export interface LayerApis {
  auth?: AuthService | undefined;
  users?: UserService | undefined;
  audit?: AuditService | undefined;
  repositories?: { users: UserRepository; tokens: TokenRepository; audit: AuditRepository; counters: CounterStore; idempotency: IdempotencyRepository } | undefined;
}

/** Registers the internal APIs this process holds, with gRPC health checking and reflection. */
export function createLayerRoutes(apis: LayerApis, readiness: Record<string, ReadinessCheck>, health: HealthWatchOptions): (router: ConnectRouter) => void {
  const files: DescFile[] = [file_grpc_health_v1_health, file_grpc_reflection_v1_reflection, file_grpc_reflection_v1alpha_reflection];
  const names: string[] = [];
  const registrations: ((router: ConnectRouter) => void)[] = [];
  /** Serves `service`, and lists it for health checking and reflection. */
  const serve = <S extends DescService>(file: DescFile, service: S, impl: ServiceImpl<S>) => {
    files.push(file);
    names.push(service.typeName);
    registrations.push((router) => router.service(service, impl));
  };
  if (apis.auth !== undefined) serve(file_arcana_internal_service_v1_auth_layer_service, AuthLayerService, createAuthLayerHandler(apis.auth));
  if (apis.users !== undefined) serve(file_arcana_internal_service_v1_user_layer_service, UserLayerService, createUserLayerHandler(apis.users));
  if (apis.audit !== undefined) serve(file_arcana_internal_service_v1_audit_layer_service, AuditLayerService, createAuditLayerHandler(apis.audit));
  const repositories = apis.repositories;
  if (repositories !== undefined) {
    serve(file_arcana_internal_repository_v1_user_repository_service, UserRepositoryService, createUserRepositoryHandler(repositories.users));
    serve(file_arcana_internal_repository_v1_token_repository_service, TokenRepositoryService, createTokenRepositoryHandler(repositories.tokens));
    serve(file_arcana_internal_repository_v1_audit_repository_service, AuditRepositoryService, createAuditRepositoryHandler(repositories.audit));
    serve(file_arcana_internal_repository_v1_counter_store_service, CounterStoreService, createCounterStoreHandler(repositories.counters));
    serve(file_arcana_internal_repository_v1_idempotency_repository_service, IdempotencyRepositoryService, createIdempotencyRepositoryHandler(repositories.idempotency));
  }
  const reflection = createReflectionServices(files);
  // One instance for every router (HTTP/1.1 and HTTP/2): the Watch cap and probe are per process.
  const healthService = createHealthService(readiness, names, health);
  return (router) => {
    for (const register of registrations) register(router);
    router.service(Health, healthService);
    router.service(ServerReflectionV1, reflection.v1);
    router.service(ServerReflectionV1alpha, reflection.v1alpha);
  };
}

/**
 * Enters the context of an incoming internal call: the request id and caller the layer above
 * sent, and its deadline, so that this layer's own downstream calls carry them on. One debug
 * line per call: the public edge already logs every request once.
 */
export function layerContextInterceptor(logger: Logger, tracing?: Tracing): Interceptor {
  return (next) => (req) => {
    const requestId = requestIdFrom(req.header.get('x-request-id'));
    const caller = req.header.get('x-arcana-caller') ?? undefined;
    const timeoutMs = timeoutFromHeaders(req.header);
    const key = req.header.get(INTERNAL_IDEMPOTENCY_KEY_HEADER);
    const idempotency: IdempotentCall | undefined = key === null ? undefined : { key, replayed: false };
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    // The layer above's client span, from its `traceparent`, is this span's parent. Health
    // checks are probes, not requests: untraced.
    const span =
      tracing !== undefined && req.service.typeName !== Health.typeName
        ? tracing.startServerSpan(procedure, (name) => req.header.get(name), {
            'rpc.system.name': req.header.get('content-type')?.startsWith('application/grpc') === true ? 'grpc' : 'connect_rpc',
            'rpc.method': procedure,
          })
        : undefined;
    return runWithCallContext({ requestId, caller, deadline: timeoutMs === undefined ? undefined : Date.now() + timeoutMs, signal: req.signal, idempotency, span }, async () => {
      try {
        const res = await next(req);
        if (idempotency?.replayed === true) res.header.set(INTERNAL_REPLAYED_HEADER, 'true');
        span?.end();
        logger.debug(
          { requestId, procedure, caller, durationMs: Math.round((performance.now() - started) * 100) / 100, traceId: span?.spanContext().traceId },
          'internal call completed',
        );
        return res;
      } catch (error) {
        if (span !== undefined) endWithError(span, error);
        logger.debug(
          { requestId, procedure, caller, durationMs: Math.round((performance.now() - started) * 100) / 100, traceId: span?.spanContext().traceId },
          'internal call failed',
        );
        throw error;
      }
    });
  };
}

/**
 * Refuses internal calls that do not present the deployment's INTERNAL_API_SECRET. The gRPC
 * health service stays open, as orchestrators' probes carry no credentials.
 */
export function internalAuthInterceptor(secret: string): Interceptor {
  // Comparing digests keeps the comparison constant-time whatever the length presented.
  const expected = createHash('sha256').update(`Bearer ${secret}`).digest();
  return (next) => (req) => {
    if (req.service.typeName !== Health.typeName) {
      const presented = createHash('sha256')
        .update(req.header.get('authorization') ?? '')
        .digest();
      if (!timingSafeEqual(presented, expected)) throw new ConnectError('internal call without a valid INTERNAL_API_SECRET', Code.Unauthenticated);
    }
    return next(req);
  };
}
