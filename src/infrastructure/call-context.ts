// What travels with a request across layer boundaries: its id, its deadline and who it is for.
// Business code never sees this: the edges (REST middleware, RPC interceptors, the internal
// servers) enter it, and the internal clients read it to set the outgoing headers and timeout.
// The one reader in the service layer is IdempotentRequests, for the client's Idempotency-Key.
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Span } from '@opentelemetry/api';

export interface CallContext {
  /** The request id, the same in every layer's logs. */
  requestId: string;
  /** Epoch milliseconds by which the whole request must be answered; absent means no deadline yet. */
  deadline?: number | undefined;
  /** Who the request is for, for downstream logs: `user:<id>` once authenticated. */
  caller?: string | undefined;
  /** Aborts when nobody awaits the answer any more: the client disconnected or cancelled. */
  signal?: AbortSignal | undefined;
  /**
   * The client's Idempotency-Key, for the one operation the edge called with it, and whether
   * that operation answered with a stored answer (set by the service layer, read by the edge).
   */
  idempotency?: IdempotentCall | undefined;
  /**
   * Reads already made for this request, by key (see `readOnce`), so that one request reading
   * the same record twice (the caller's profile: once to authenticate, once to answer) pays once.
   */
  reads?: Map<string, Promise<unknown>> | undefined;
  /**
   * Whether this call may repeat one already carried out (REPEAT_HEADER in
   * communication/layer-transport.ts): set by the layer server, passed on to every call below.
   */
  repeat?: boolean | undefined;
  /** The span of this request in this process, when tracing is on: the parent of its calls' spans. */
  span?: Span | undefined;
}

/** An operation called with an Idempotency-Key. */
export interface IdempotentCall {
  /** The key as the client sent it, already checked at the edge. */
  readonly key: string;
  /** Set when the answer is the stored answer to an earlier request with this key. */
  replayed: boolean;
}

// AsyncLocalStorage is the one module-level object here: it holds no state of its own, only the
// per-request context of whichever async chain is running, which is what propagation needs.
const storage = new AsyncLocalStorage<CallContext>();

/** Runs `work` with `context` as the current call context. */
export function runWithCallContext<T>(context: CallContext, work: () => T): T {
  return storage.run(context, work);
}

/**
 * Runs `work` outside any request's context: for work a request starts but does not await (the
 * audit writer), which must not inherit the request's deadline or be cancelled when it ends.
 */
export function detachedFromRequest<T>(work: () => T): T {
  return storage.exit(work);
}

/**
 * Runs `work` for the current request but past its cancellation: the calls it makes carry none of
 * the request's deadline and are not cancelled when its client leaves (each internal call is still
 * bounded by INTERNAL_TIMEOUT_MS). For the writes after a use case's point of no return, so that a
 * client leaving, or a deadline passing, halfway cannot leave half of them done: a new password
 * with the old sessions alive, an account without its session and its idempotency record.
 */
export function uninterrupted<T>(work: () => T): T {
  const context = storage.getStore();
  running += 1;
  lastActive = Date.now();
  let result: T;
  try {
    result = context === undefined ? work() : storage.run({ ...context, deadline: undefined, signal: undefined }, work);
  } catch (error) {
    settle();
    throw error;
  }
  // The caller still gets the work's own promise (and its rejection); this only watches it end.
  if (result instanceof Promise) result.then(settle, settle);
  else settle();
  return result;
}

/** Sections of `uninterrupted` work running now, and when one last started or ended. */
let running = 0;
let lastActive = 0;
const settle = () => {
  running -= 1;
  lastActive = Date.now();
};

/**
 * Resolves once no `uninterrupted` work has run for `quietMs`, nor `busy` said other work was
 * under way (work that starts as a request is cut short, such as releasing its idempotency claim,
 * starts within that), or at `withinMs`; true when it settled. For a shutdown, so that the
 * database is not closed between the writes of one use case.
 */
export async function uninterruptedSettled(options: { quietMs: number; withinMs: number; busy?: () => boolean }): Promise<boolean> {
  const giveUpAt = Date.now() + options.withinMs;
  for (;;) {
    const now = Date.now();
    if (options.busy?.() === true) lastActive = now;
    if (running === 0 && now - lastActive >= options.quietMs) return true;
    if (now >= giveUpAt) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(options.quietMs, 25)));
  }
}

/** The current request's context, if the code runs on behalf of one. */
export function currentCallContext(): CallContext | undefined {
  return storage.getStore();
}

/** Records who the current request is for, once its access token has been checked. */
export function identifyCaller(userId: number): void {
  const context = storage.getStore();
  if (context !== undefined) context.caller = `user:${userId}`;
}

/**
 * Runs `work`, one call of an operation that honours idempotency keys, with the client's `key`
 * in the call context, where the service layer finds it in whichever process it runs (the layer
 * transport carries it across). Resolves to the answer and whether it was a replayed one.
 */
export async function runIdempotent<T>(key: string | undefined, work: () => Promise<T>): Promise<{ result: T; replayed: boolean }> {
  if (key === undefined) return { result: await work(), replayed: false };
  const parent = storage.getStore();
  const idempotency: IdempotentCall = { key, replayed: false };
  // A child context, so that the key goes with this one call and not with the rest of the
  // request (an authentication before it, say).
  const result = await storage.run({ requestId: '', ...parent, idempotency }, work);
  return { result, replayed: idempotency.replayed };
}

/** The Idempotency-Key the current operation was called with, if any. */
export function currentIdempotencyKey(): string | undefined {
  return storage.getStore()?.idempotency?.key;
}

/** Records that the current operation answers with the stored answer to an earlier request. */
export function markReplayed(): void {
  const idempotency = storage.getStore()?.idempotency;
  if (idempotency !== undefined) idempotency.replayed = true;
}

/** Milliseconds left before the current request's deadline, or undefined when it has none. */
export function remainingMs(now = Date.now()): number | undefined {
  const deadline = storage.getStore()?.deadline;
  return deadline === undefined ? undefined : deadline - now;
}

/**
 * What expensive work done for the current request should respect (see WorkGate): its deadline
 * and whether its caller is still there. Empty outside a request (start-up, jobs).
 */
export function currentWorkLimits(): { deadline?: number | undefined; signal?: AbortSignal | undefined } {
  const context = storage.getStore();
  return context === undefined ? {} : { deadline: context.deadline, signal: context.signal };
}

/**
 * Why the current request's answer can reach nobody now: its client has gone (`abandoned`), or its
 * deadline has passed (`late`); undefined while it may still be answered, or outside any request.
 */
export function requestOutOfTime(now = Date.now()): 'abandoned' | 'late' | undefined {
  const { deadline, signal } = currentWorkLimits();
  if (signal?.aborted === true) return 'abandoned';
  if (deadline !== undefined && now >= deadline) return 'late';
  return undefined;
}

/**
 * The deadline an incoming RPC carries in its own protocol's header: `grpc-timeout` (a number and a
 * unit: H, M, S, m, u, n) for gRPC and gRPC-Web, `connect-timeout-ms` for Connect, as Connect
 * itself reads them. The other protocol's header means nothing to the call: a Connect call with
 * `grpc-timeout: 0n` (or a gRPC call with `connect-timeout-ms: 0`) is served in full by the
 * monolith, and was cut short between layers (helper 143). Undefined when the caller set none.
 */
export function timeoutFromHeaders(header: Headers): number | undefined {
  // Case-insensitive, as connect-es matches content types (helper 146: `application/GRPC` was
  // served as gRPC with Connect's deadline header).
  if (/^application\/grpc/i.test(header.get('content-type') ?? '')) return timerTimeout(grpcTimeoutMs(header.get('grpc-timeout')));
  return timerTimeout(connectTimeoutMs(header.get('connect-timeout-ms')));
}

/** A well-formed `connect-timeout-ms` value (up to 10 digits, as Connect reads it), or undefined. */
export function connectTimeoutMs(value: string | null | undefined): number | undefined {
  return value != null && /^\d{1,10}$/.test(value) ? Number(value) : undefined;
}

/** A well-formed `grpc-timeout` value in milliseconds, or undefined. */
export function grpcTimeoutMs(value: string | null | undefined): number | undefined {
  const grpc = /^(\d{1,8})([HMSmun])$/.exec(value ?? '');
  if (grpc === null) return undefined;
  const unitMs = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 }[grpc[2] as 'H' | 'M' | 'S' | 'm' | 'u' | 'n'];
  return Number(grpc[1]) * unitMs;
}

/**
 * The longest timeout a timer can wait: Node fires a longer `setTimeout` after 1 ms (with a
 * TimeoutOverflowWarning), which turned a client's 25-day deadline into an instant cancellation.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A timeout as a deadline to keep: one past what a timer can wait is no deadline at all. */
export function timerTimeout(timeoutMs: number | undefined): number | undefined {
  return timeoutMs === undefined || timeoutMs > MAX_TIMER_MS ? undefined : timeoutMs;
}

/**
 * `read()`, made at most once per request for `key`: a second caller in the same request gets
 * the first one's answer, a snapshot taken within the request. Outside a request it just reads.
 * A write to the record must call `forgetRead(key)` so that the rest of the request reads anew.
 */
export function readOnce<T>(key: string, read: () => Promise<T>): Promise<T> {
  const context = storage.getStore();
  if (context === undefined) return read();
  const reads = (context.reads ??= new Map<string, Promise<unknown>>());
  const known = reads.get(key);
  if (known !== undefined) return known as Promise<T>;
  const reading = read();
  reads.set(key, reading);
  // A failed read is not remembered: the next caller tries again.
  reading.catch(() => {
    if (reads.get(key) === reading) reads.delete(key);
  });
  return reading;
}

/** Drops what `readOnce` remembered for `key` in the current request (the record was written). */
export function forgetRead(key: string): void {
  storage.getStore()?.reads?.delete(key);
}
