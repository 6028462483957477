// What the benchmark runner hands to a load worker process, and what it gets back. Both sides
// exchange these as plain JSON over the child-process IPC channel, so nothing here may hold
// functions or class instances.

/** One API operation with everything needed to send it, independent of the protocol carrying it. */
export type Call =
  | { rpc: 'getUser'; token: string; userId: number }
  | { rpc: 'getCurrentUser'; token: string }
  | { rpc: 'listUsers'; token: string; page: number; perPage: number }
  | { rpc: 'login'; usernameOrEmail: string; password: string };

/** A fully rendered HTTP/1.1 request, as autocannon sends it. */
export interface HttpRequestSpec {
  method: 'GET' | 'POST';
  /** Path and query, e.g. /api/v1/users/7. */
  path: string;
  headers: Record<string, string>;
  body?: string;
}

interface LoadShape {
  /** e.g. http://127.0.0.1:41234 */
  baseUrl: string;
  /** Requests kept in flight at once: HTTP/1.1 connections, or concurrent gRPC calls. */
  concurrency: number;
  /** Load before the measured window opens; the load runs on without a break into the window. */
  warmupSeconds: number;
  durationSeconds: number;
  /** A request still unanswered after this long counts as an error. */
  timeoutSeconds: number;
  /** Hard cap on requests in the whole run, so a run is bounded in count as well as time. */
  maxRequests: number;
}

/** HTTP/1.1 load (REST, Connect JSON, baseline) driven by autocannon; requests are used round-robin. */
export interface HttpLoadJob extends LoadShape {
  kind: 'http';
  requests: HttpRequestSpec[];
}

/** gRPC over h2c driven by a bounded loop of concurrent calls; calls are used round-robin. */
export interface GrpcLoadJob extends LoadShape {
  kind: 'grpc';
  calls: Call[];
}

export type LoadJob = HttpLoadJob | GrpcLoadJob;

export interface LatencySummary {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/**
 * The measured window of one job: requests that completed inside it. Latencies are of successful
 * requests only, in milliseconds.
 */
export interface LoadSummary {
  /** Length of the measured window, in seconds. */
  durationSeconds: number;
  /** Requests that completed in the window with any outcome, connection errors and timeouts included. */
  total: number;
  /** 2xx responses, or RPCs that returned without error. */
  ok: number;
  /** Non-2xx responses, RPC errors, connection errors and timeouts. */
  errors: number;
  /** total / durationSeconds. */
  requestsPerSecond: number;
  /** ok / durationSeconds. */
  okPerSecond: number;
  latencyMs: LatencySummary | null;
  /** How often each outcome occurred: HTTP status codes, Connect code names, or error kinds. */
  outcomes: Record<string, number>;
  /** CPU the load generator process used during the window, in % of one core. */
  generatorCpuPercent: number | null;
}

/** The worker's one reply: the summary, or why the job could not run (e.g. the preflight failed). */
export type WorkerReply = { ok: true; summary: LoadSummary } | { ok: false; error: string };
