import { createClient, type Transport } from '@connectrpc/connect';
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';

/** A dependency the process needs to serve requests, checked by `/ready` and the gRPC health service. */
export type ReadinessCheck = () => Promise<void>;

/** How long a probe waits for a check before it counts as failed. */
export const READINESS_TIMEOUT_MS = 2_000;

/**
 * `check`, run at most once at a time: whoever asks while it runs gets that run's outcome. The
 * probes are unauthenticated and exempt from rate limits (orchestrators call them), so without
 * this a flood of `/ready` or `Health/Check` was a flood of database queries and, in a split
 * topology, of calls down every layer. No outcome is kept after its run ends, so an answer is
 * never older than the request it answers. A run that hangs (every pooled connection held by
 * stuck writes) fails each probe after `timeoutMs` and is not started again until it ends, so
 * probes neither hang with it nor pile more work behind it.
 */
export function sharedCheck(check: ReadinessCheck, timeoutMs = READINESS_TIMEOUT_MS): ReadinessCheck {
  let running: Promise<void> | undefined;
  return () => {
    running ??= Promise.resolve()
      .then(check)
      .finally(() => {
        running = undefined;
      });
    const run = running;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the check did not answer within ${timeoutMs} ms`)), timeoutMs);
      run.then(resolve, reject).finally(() => clearTimeout(timer));
    });
  };
}

/**
 * A downstream layer is ready when one of its processes says it is serving. Calls go to the
 * processes behind its URLs in turn, so one check asked only the next in line: with one replica
 * of two unready, `/ready` answered 200 and 503 by turns (helper 142). A check that finds one not
 * serving asks the next ones, up to DOWNSTREAM_READINESS_TRIES in all, within the same 2 s.
 */
export function downstreamReady(transport: Transport): ReadinessCheck {
  const health = createClient(Health, transport);
  return sharedCheck(async () => {
    const deadline = Date.now() + DOWNSTREAM_READINESS_MS;
    let failure: unknown = new Error('downstream layer is not serving');
    for (let tries = 0; tries < DOWNSTREAM_READINESS_TRIES && Date.now() < deadline; tries += 1) {
      try {
        const { status } = await health.check({ service: '' }, { timeoutMs: deadline - Date.now() });
        if (status === ServingStatus.SERVING) return;
        failure = new Error('downstream layer is not serving');
      } catch (error) {
        failure = error;
      }
    }
    throw failure;
  });
}

/** How long a readiness check of the layer below may take, and how many of its processes it asks. */
const DOWNSTREAM_READINESS_MS = READINESS_TIMEOUT_MS;
const DOWNSTREAM_READINESS_TRIES = 3;
