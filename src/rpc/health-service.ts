// The standard gRPC health-checking protocol (grpc.health.v1.Health), so that load balancers,
// Kubernetes gRPC probes, grpc_health_probe and `buf curl` can ask whether the server is serving.
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { type Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { placesPerAddress } from '../infrastructure/client-address.ts';
import { callerKey } from './caller.ts';

export interface HealthWatchOptions {
  /** How often the readiness checks run while anyone watches. */
  watchIntervalMs: number;
  /** Watch streams open at once in this process; beyond it Watch answers resource_exhausted. */
  maxWatches: number;
  /**
   * Of those, open at once per client address (addressKey, as the caller's context gives it;
   * calls without one share the process's cap only); 0: no share.
   */
  maxWatchesPerAddress?: number | undefined;
  /**
   * Aborted when the process starts shutting down: from then on the server is NOT_SERVING, and
   * each open watch is told so and completed, since a graceful drain would otherwise wait for
   * watches that never end.
   */
  draining?: AbortSignal | undefined;
}

/**
 * Health service answering for the server as a whole (the empty name) and for each of `services`
 * (fully-qualified names such as 'arcana.auth.v1.AuthService'), all of which depend on every check.
 * Create it once per process: the Watch cap and the shared probe are per instance.
 */
export function createHealthService(checks: Record<string, () => Promise<void>>, services: string[], options: HealthWatchOptions): ServiceImpl<typeof Health> {
  const known = new Set(['', ...services]);

  // Every service depends on every check (they are the process's shared dependencies, such as
  // the database), so one status serves them all. Checks run in parallel so that one slow check
  // does not delay the others.
  async function currentStatus(): Promise<ServingStatus> {
    if (options.draining?.aborted === true) return ServingStatus.NOT_SERVING;
    const results = await Promise.allSettled(Object.values(checks).map((check) => check()));
    return results.every((result) => result.status === 'fulfilled') ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  }

  // A Watch stream lives as long as its client wants, so both what it costs while open and how
  // many may be open are bounded: all watchers share one probe per interval, however many there
  // are, and beyond the cap a new one is refused rather than queued.
  const feed = createStatusFeed(currentStatus, options.watchIntervalMs);
  let watching = 0;
  // Without a share per address, three addresses at the per-address stream cap held every place
  // while they took their messages, and no probe could watch (helper 179).
  const perAddress = options.maxWatchesPerAddress === undefined || options.maxWatchesPerAddress === 0 ? undefined : placesPerAddress(options.maxWatchesPerAddress);

  return {
    async check(request) {
      // The protocol asks for NOT_FOUND on an unknown name, which tells a probe that it is
      // misconfigured rather than that the server is unhealthy.
      if (!known.has(request.service)) throw new ConnectError(`unknown service ${nameShown(request.service)}`, Code.NotFound);
      return { status: await currentStatus() };
    },

    async *watch(request, context) {
      if (watching >= options.maxWatches) {
        throw new ConnectError(`too many open health watches (at most ${options.maxWatches}); use Check, or watch again later`, Code.ResourceExhausted);
      }
      const address = context.values.get(callerKey).client.ipAddress;
      const place = address === undefined || perAddress === undefined ? () => undefined : perAddress.take(address);
      if (place === undefined) {
        throw new ConnectError(`too many open health watches from this address (at most ${options.maxWatchesPerAddress}); use Check, or watch again later`, Code.ResourceExhausted);
      }
      watching += 1;
      // The client's signal aborts when it cancels or the deadline passes: the watch is over.
      const ended = options.draining === undefined ? context.signal : AbortSignal.any([context.signal, options.draining]);
      try {
        if (!known.has(request.service)) {
          // For an unknown name the protocol asks for SERVICE_UNKNOWN on a stream that stays
          // open, not an error: with our fixed list it simply never changes.
          yield { status: ServingStatus.SERVICE_UNKNOWN };
          await aborted(ended);
        } else {
          let last: ServingStatus | undefined;
          for await (const status of feed.updates(ended)) {
            last = status;
            yield { status };
          }
          if (!context.signal.aborted && last !== ServingStatus.NOT_SERVING) yield { status: ServingStatus.NOT_SERVING };
        }
        // A watch the call ended (its deadline passed, its client went) ends with that outcome,
        // not as a success; one the drain ended completes normally, after NOT_SERVING.
        if (context.signal.aborted) throw ConnectError.from(context.signal.reason, Code.Canceled);
      } finally {
        watching -= 1;
        place();
      }
    },
  };
}

/**
 * The serving status, probed once per interval while at least one subscriber listens and not at
 * all otherwise. A new subscriber is told the latest status at once, without a probe of its own,
 * then every change.
 */
function createStatusFeed(probe: () => Promise<ServingStatus>, intervalMs: number) {
  const listeners = new Set<(status: ServingStatus) => void>();
  let latest: ServingStatus | undefined;
  let running = false;
  let timer: NodeJS.Timeout | undefined;

  const stop = () => {
    clearTimeout(timer);
    timer = undefined;
    running = false;
    // Nobody saw what happened while stopped: the next subscriber must wait for a fresh probe.
    latest = undefined;
  };
  const tick = async () => {
    timer = undefined;
    const status = await probe();
    if (listeners.size === 0) {
      stop();
      return;
    }
    if (status !== latest) {
      latest = status;
      for (const listener of listeners) listener(status);
    }
    timer = setTimeout(() => void tick(), intervalMs);
  };

  const subscribe = (listener: (status: ServingStatus) => void): (() => void) => {
    listeners.add(listener);
    if (latest !== undefined) listener(latest);
    if (!running) {
      running = true;
      void tick();
    }
    return () => {
      listeners.delete(listener);
      // A probe in flight stops the loop itself when it returns to no listeners.
      if (listeners.size === 0 && timer !== undefined) stop();
    };
  };

  return {
    /** Each distinct status in turn until `signal` aborts; a slow reader gets only the latest. */
    async *updates(signal: AbortSignal): AsyncGenerator<ServingStatus> {
      let next: ServingStatus | undefined;
      let sent: ServingStatus | undefined;
      let wake: (() => void) | undefined;
      const unsubscribe = subscribe((status) => {
        next = status;
        wake?.();
      });
      const onAbort = () => wake?.();
      signal.addEventListener('abort', onAbort);
      try {
        while (!signal.aborted) {
          if (next !== undefined && next !== sent) {
            sent = next;
            yield sent;
            continue;
          }
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        signal.removeEventListener('abort', onAbort);
        unsubscribe();
      }
    },
  };
}

function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

/**
 * A requested service name as an error message may repeat it: the name when it could be one, else
 * a fixed text. The message travels in a header (`grpc-message`), and a client's name of any size
 * repeated there could outgrow what clients accept, or what the server can send at all.
 */
function nameShown(service: string): string {
  return /^[A-Za-z0-9_.]{0,200}$/.test(service) ? JSON.stringify(service) : '(not a service name)';
}
