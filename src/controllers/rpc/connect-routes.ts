// Every Connect service this process serves publicly, registered in one place: the service layer's
// API (its implementations in a monolith, forwarders to the service processes otherwise), gRPC
// health checking and server reflection.
import type { ConnectRouter } from '@connectrpc/connect';
import { file_arcana_auth_v1_auth_service } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { file_arcana_user_v1_user_service } from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import { file_arcana_audit_v1_audit_service } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { file_grpc_health_v1_health, Health } from '../../../gen/proto/grpc/health/v1/health_pb.js';
import { file_grpc_reflection_v1_reflection, ServerReflection as ServerReflectionV1 } from '../../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import { file_grpc_reflection_v1alpha_reflection, ServerReflection as ServerReflectionV1alpha } from '../../../gen/proto/grpc/reflection/v1alpha/reflection_pb.js';
import type { InProcessService } from '../../rpc/in-process-transport.ts';
import type { ReadinessCheck } from '../../rpc/readiness.ts';
import { createHealthService, type HealthWatchOptions } from '../../rpc/health-service.ts';
import { createReflectionServices, REFLECTION_HANDLER_OPTIONS } from '../../rpc/reflection-service.ts';

/** The public API plus gRPC health checking and server reflection. */
export function createConnectRoutes(deps: {
  services: readonly InProcessService[];
  readiness: Record<string, ReadinessCheck>;
  health: HealthWatchOptions;
}): (router: ConnectRouter) => void {
  const reflection = createReflectionServices(
    [
      file_arcana_auth_v1_auth_service,
      file_arcana_user_v1_user_service,
      file_arcana_audit_v1_audit_service,
      file_grpc_health_v1_health,
      file_grpc_reflection_v1_reflection,
      file_grpc_reflection_v1alpha_reflection,
    ],
    { draining: deps.health.draining },
  );
  // One instance for every router (HTTP/1.1 and HTTP/2): the Watch cap and probe are per process.
  const health = createHealthService(
    deps.readiness,
    deps.services.map(({ service }) => service.typeName),
    deps.health,
  );
  return (router) => {
    for (const { service, impl } of deps.services) router.service(service, impl);
    router.service(Health, health);
    router.service(ServerReflectionV1, reflection.v1, REFLECTION_HANDLER_OPTIONS);
    router.service(ServerReflectionV1alpha, reflection.v1alpha, REFLECTION_HANDLER_OPTIONS);
  };
}
