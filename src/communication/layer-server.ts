// The serving side of the internal APIs: what a layer process registers, and the interceptor that
// enters each incoming call's context (request id, caller, deadline) for the calls it makes next.
import { Code, ConnectError, createContextValues, type ConnectRouter, type ContextValues, type HandlerContext, type Interceptor, type ServiceImpl } from '@connectrpc/connect';
import type { IncomingMessage } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { DescFile, DescService } from '@bufbuild/protobuf';
import { MethodOptions_IdempotencyLevel } from '@bufbuild/protobuf/wkt';
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
import { createHealthService, type HealthWatchOptions } from '../rpc/health-service.ts';
import { createReflectionServices, REFLECTION_HANDLER_OPTIONS } from '../rpc/reflection-service.ts';
import type { ReadinessCheck } from '../rpc/readiness.ts';
import type { Logger } from '../infrastructure/logger.ts';
import { endWithError, type Tracing } from '../infrastructure/tracing.ts';
import { requestIdFrom } from '../infrastructure/request-id.ts';
import type { CounterStore } from '../infrastructure/rate-limiter.ts';
import type { AuditRepository } from '../repositories/audit-repository.ts';
import type { IdempotencyRepository } from '../repositories/idempotency-repository.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import type { UserRepository } from '../repositories/user-repository.ts';
import { runWithCallContext, timeoutFromHeaders, type CallContext } from '../infrastructure/call-context.ts';
import { callerFromHeaders, callerKey } from '../rpc/caller.ts';
import type { InProcessService } from '../rpc/in-process-transport.ts';
import { admitsAsHealthCheck, isHealthService } from '../rpc/call-limits.ts';
import { CALLER_HEADER, REPEAT_HEADER } from './layer-transport.ts';
import {
  createAuditRepositoryHandler,
  createCounterStoreHandler,
  createIdempotencyRepositoryHandler,
  createTokenRepositoryHandler,
  createUserRepositoryHandler,
  refusingIncompleteRequests,
} from './repository/repository-handlers.ts';

/** What one process serves to the layer above it. */
export interface LayerApis {
  /** The service layer's API: the public services, implemented here. */
  services?: readonly InProcessService[] | undefined;
  repositories?: { users: UserRepository; tokens: TokenRepository; audit: AuditRepository; counters: CounterStore; idempotency: IdempotencyRepository } | undefined;
}

/** Registers the internal APIs this process holds, with gRPC health checking and reflection. */
export function createLayerRoutes(apis: LayerApis, readiness: Record<string, ReadinessCheck>, health: HealthWatchOptions): (router: ConnectRouter) => void {
  const files: DescFile[] = [file_grpc_health_v1_health, file_grpc_reflection_v1_reflection, file_grpc_reflection_v1alpha_reflection];
  const names: string[] = [];
  const registrations: ((router: ConnectRouter) => void)[] = [];
  /** Serves `service`, and lists it for health checking and reflection. */
  const serve = <S extends DescService>(file: DescFile, service: S, impl: Partial<ServiceImpl<S>>) => {
    files.push(file);
    names.push(service.typeName);
    registrations.push((router) => router.service(service, impl));
  };
  for (const { service, impl } of apis.services ?? []) serve(service.file, service, impl);
  const repositories = apis.repositories;
  if (repositories !== undefined) {
    // Every repository service refuses a request lacking a required field as invalid_argument.
    const serveRepository = <S extends DescService>(file: DescFile, service: S, impl: ServiceImpl<S>) => serve(file, service, refusingIncompleteRequests(impl));
    serveRepository(file_arcana_internal_repository_v1_user_repository_service, UserRepositoryService, createUserRepositoryHandler(repositories.users));
    serveRepository(file_arcana_internal_repository_v1_token_repository_service, TokenRepositoryService, createTokenRepositoryHandler(repositories.tokens));
    serveRepository(file_arcana_internal_repository_v1_audit_repository_service, AuditRepositoryService, createAuditRepositoryHandler(repositories.audit));
    serveRepository(file_arcana_internal_repository_v1_counter_store_service, CounterStoreService, createCounterStoreHandler(repositories.counters));
    serveRepository(file_arcana_internal_repository_v1_idempotency_repository_service, IdempotencyRepositoryService, createIdempotencyRepositoryHandler(repositories.idempotency));
  }
  const reflection = createReflectionServices(files, { draining: health.draining });
  // One instance for every router (HTTP/1.1 and HTTP/2): the Watch cap and probe are per process.
  const healthService = createHealthService(readiness, names, health);
  return (router) => {
    for (const register of registrations) register(router);
    router.service(Health, healthService);
    router.service(ServerReflectionV1, reflection.v1, REFLECTION_HANDLER_OPTIONS);
    router.service(ServerReflectionV1alpha, reflection.v1alpha, REFLECTION_HANDLER_OPTIONS);
  };
}

/**
 * connect-node's `contextValues` hook for a layer process: the caller of the public request, as
 * the controller layer sent it. Believed only on calls that pass internalAuthInterceptor.
 */
export function layerCallValues(req: IncomingMessage | Http2ServerRequest): ContextValues {
  return createContextValues().set(
    callerKey,
    callerFromHeaders((name) => {
      const value = req.headers[name];
      return Array.isArray(value) ? value[0] : value;
    }),
  );
}

/**
 * Enters the context of an incoming internal call: the request id and caller the layer above
 * sent, and its deadline, so that this layer's own downstream calls carry them on. One debug
 * line per call: the public edge already logs every request once.
 */
export function layerContextInterceptor(logger: Logger, tracing?: Tracing): Interceptor {
  return (next) => (req) => {
    const requestId = requestIdFrom(req.header.get('x-request-id'));
    const caller = req.header.get(CALLER_HEADER) ?? undefined;
    const timeoutMs = timeoutFromHeaders(req.header);
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    // The layer above's client span, from its `traceparent`, is this span's parent. Health
    // checks are probes, not requests: untraced.
    const span =
      tracing !== undefined && !isHealthService(req.service)
        ? tracing.startServerSpan(
            procedure,
            (name) => req.header.get(name),
            {
              'rpc.system.name': req.header.get('content-type')?.startsWith('application/grpc') === true ? 'grpc' : 'connect_rpc',
              'rpc.method': procedure,
            },
            true,
          )
        : undefined;
    const context: CallContext = {
      requestId,
      caller,
      deadline: timeoutMs === undefined ? undefined : Date.now() + timeoutMs,
      signal: req.signal,
      span,
      repeat: req.header.has(REPEAT_HEADER) || undefined,
    };
    return runWithCallContext(context, async () => {
      try {
        // A write its caller has already given up (deadline passed, or cancelled while this
        // process could not read: stalled, paused, its socket buffer full) is not carried out:
        // the caller has answered its own client 503 by then. A repository paused past the
        // deadlines carried out logouts, registrations and suspensions seconds after their 503
        // (helper 50). The cancellation may sit unread behind the call in the same socket, so a
        // write first waits until the event loop has polled its sockets once more; reads
        // (declared NO_SIDE_EFFECTS) do not wait.
        if (req.method.idempotency !== MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS) await pollOnce();
        if (req.signal.aborted) throw ConnectError.from(req.signal.reason, Code.Canceled);
        const res = await next(req);
        // Who the caller turned out to be (the service layer authenticates it), for the layer
        // above's request log.
        if (context.caller !== undefined && context.caller !== caller) res.header.set(CALLER_HEADER, context.caller);
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
 * Refuses internal calls that do not present the deployment's INTERNAL_API_SECRET, as the RPC
 * handler's gate (`admit`): from the headers, before the body is read. As an interceptor it ran
 * after the gate had read, decompressed and decoded up to 16 MiB per call for anyone, and told
 * them which fields were wrong. The gRPC health service stays open, as orchestrators' probes
 * carry no credentials, but its calls are held to HEALTH_READ_MAX_BYTES. Without a
 * secret (development), every call is let through.
 */
export function internalAuthGate(secret: string | undefined): (context: HandlerContext) => Promise<void> {
  const vouched = secret === undefined ? undefined : presentsSecret(secret);
  return async (context) => {
    const authorization = context.requestHeader.get('authorization') ?? undefined;
    // A health call that presents credentials is held to them: the layer above's readiness check
    // presents its secret, and a process whose secret this layer refuses was reported ready
    // (`/ready` 200, SERVING) while every call it made was refused, so a rollout with a wrong or
    // rotated secret passed its probes and answered every request 500 (helper 214).
    if (admitsAsHealthCheck(context) && authorization === undefined) return;
    if (vouched === undefined) return;
    if (!vouched(authorization)) throw new ConnectError('internal call without a valid INTERNAL_API_SECRET', Code.Unauthenticated);
  };
}

/** Whether an Authorization header is `Bearer <secret>`, as the layers above send it. */
export function presentsSecret(secret: string): (authorization: string | undefined) => boolean {
  // Comparing digests keeps the comparison constant-time whatever the length presented.
  const expected = createHash('sha256').update(`Bearer ${secret}`).digest();
  return (authorization) =>
    timingSafeEqual(
      createHash('sha256')
        .update(authorization ?? '')
        .digest(),
      expected,
    );
}

/**
 * Resolves after the event loop has polled its sockets once more: in the check phase of the turn
 * after this one. What had arrived behind the current input by then (an RST_STREAM, a FIN) has
 * been read and acted on.
 */
function pollOnce(): Promise<void> {
  return new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
}
