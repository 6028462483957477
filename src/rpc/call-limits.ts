// Limits one RPC call may be held to, below the handler's own, set by its admission before the
// body is read (see createRpcNodeHandler's `admit` and the request decoder).
import { createContextKey } from '@connectrpc/connect';

/**
 * A lower limit than readMaxBytes for one call's message, compressed or not, set by the handler's
 * admission before the body is read: an internal layer's health checks, open to callers without
 * the internal secret, are decoded under the layer's limit for trusted peers otherwise (helper
 * 110: 16 KB of gzip per call inflated to 16 MiB; 150 calls took the process to 5 GB).
 */
export const callReadLimitKey = createContextKey<number | undefined>(undefined, { description: "the largest message this call's admission allows" });
