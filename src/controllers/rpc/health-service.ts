// The standard gRPC health-checking protocol (grpc.health.v1.Health), so that load balancers,
// Kubernetes gRPC probes, grpc_health_probe and `buf curl` can ask whether the server is serving.
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../../gen/proto/grpc/health/v1/health_pb.js';

/**
 * Health service answering for the server as a whole (the empty name) and for each of `services`
 * (fully-qualified names such as 'arcana.auth.v1.AuthService'), all of which depend on every check.
 */
export function createHealthService(
  checks: Record<string, () => Promise<void>>,
  services: string[],
  watchIntervalMs = 5_000,
): ServiceImpl<typeof Health> {
  const known = new Set(['', ...services]);

  // Every service depends on every check (they are the process's shared dependencies, such as
  // the database), so one status serves them all. Checks run in parallel so that one slow check
  // does not delay the others.
  async function currentStatus(): Promise<ServingStatus> {
    const results = await Promise.allSettled(Object.values(checks).map((check) => check()));
    return results.every((result) => result.status === 'fulfilled') ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  }

  return {
    async check(request) {
      // The protocol asks for NOT_FOUND on an unknown name, which tells a probe that it is
      // misconfigured rather than that the server is unhealthy.
      if (!known.has(request.service)) {
        throw new ConnectError(`unknown service ${JSON.stringify(request.service)}`, Code.NotFound);
      }
      return { status: await currentStatus() };
    },

    async *watch(request, context) {
      let last: ServingStatus | undefined;
      while (!context.signal.aborted) {
        // For an unknown name the protocol asks for SERVICE_UNKNOWN on a stream that stays open,
        // not an error: with our fixed list it simply never changes.
        const status = known.has(request.service) ? await currentStatus() : ServingStatus.SERVICE_UNKNOWN;
        if (status !== last) {
          last = status;
          yield { status };
        }
        try {
          await sleep(watchIntervalMs, undefined, { signal: context.signal });
        } catch (error) {
          // The signal aborts when the client cancels or the deadline passes: the watch is over.
          if (context.signal.aborted) return;
          throw error;
        }
      }
    },
  };
}
