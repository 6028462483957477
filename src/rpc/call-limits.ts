// Limits one RPC call may be held to, below the handler's own, set by its admission before the
// body is read (see createRpcNodeHandler's `admit` and the request decoder).
import { createContextKey, type HandlerContext } from '@connectrpc/connect';
import { Health } from '../../gen/proto/grpc/health/v1/health_pb.js';

/**
 * A lower limit than readMaxBytes for one call's message, compressed or not, set by the handler's
 * admission before the body is read: an internal layer's health checks, open to callers without
 * the internal secret, are decoded under the layer's limit for trusted peers otherwise (helper
 * 110: 16 KB of gzip per call inflated to 16 MiB; 150 calls took the process to 5 GB).
 */
export const callReadLimitKey = createContextKey<number | undefined>(undefined, { description: "the largest message this call's admission allows" });

/**
 * The largest message a health call may send, compressed or not: a health check names a service.
 * Health calls are open to anyone (probes carry no credentials) and outside the rate limit, so
 * they are held to this before the body is read, on the public API as on the internal layers
 * (helper 202: 20 bytes of Brotli that inflated to 99 KB of unknown fields cost ~100 ms each).
 */
export const HEALTH_READ_MAX_BYTES = 4 * 1024;

/** The encodings one call's message may be sent in, when its admission allows fewer than the server takes. */
export const callEncodingsKey = createContextKey<readonly string[] | undefined>(undefined, { description: "the encodings this call's admission allows" });

/**
 * The encodings a health call may use: not Brotli, whose decoder sets up its window (up to 16 MB)
 * before a byte comes out, so that 27 bytes cost 10-30 ms of CPU whatever the 4 KiB limit on the
 * output, for calls no rate limit charges (helper 215: 245 such calls took 7.3 s of CPU and held
 * an administrator's login 2.7-3.1 s). gRPC's clients send gzip or deflate, if anything.
 */
export const HEALTH_ENCODINGS: readonly string[] = ['gzip', 'deflate'];

/**
 * Holds a call of the gRPC health service to HEALTH_READ_MAX_BYTES and HEALTH_ENCODINGS, and says
 * whether it is one: such calls are let through by every admission (probes carry no
 * credentials), on these terms.
 */
export function admitsAsHealthCheck(context: HandlerContext): boolean {
  if (!isHealthService(context.service)) return false;
  context.values.set(callReadLimitKey, HEALTH_READ_MAX_BYTES);
  context.values.set(callEncodingsKey, HEALTH_ENCODINGS);
  return true;
}

/** Whether calls of `service` are health checks: open to anyone, charged to no rate limit. */
export function isHealthService(service: { typeName: string }): boolean {
  return service.typeName === Health.typeName;
}
