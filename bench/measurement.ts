// What one run of a load generator measured, in the same shape for wrk and h2load.

export interface LatencySummary {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface Measurement {
  tool: 'wrk' | 'h2load';
  /** The command line, with credentials replaced. */
  args: string[];
  /** Length of the measured window, in seconds. */
  durationSeconds: number;
  /** Answers received in the window, whatever their status. */
  requests: number;
  /** Answers received over the whole run, warm-up included: what the generator's CPU was spent on. */
  requestsWholeRun: number;
  /** 2xx answers in the window (for gRPC: HTTP 200s; see `grpc` in the result row for the calls' own status). */
  ok: number;
  requestsPerSecond: number;
  okPerSecond: number;
  /** Milliseconds from sending a request to the end of its answer, over every answer. */
  latencyMs: LatencySummary | null;
  /** Which answers the percentiles are taken over. */
  latencyCovers: string;
  /** Answers in the window by HTTP status. */
  statuses: Record<string, number>;
  /**
   * Requests that failed, by kind: non-2xx answers, and what the generator reports itself (wrk:
   * connect, read, write, timeout; h2load: errored streams, timeouts).
   */
  errors: Record<string, number>;
  /** CPU seconds the generator process used, start-up and exit included. */
  generatorCpuSeconds: number | null;
  generatorPid: number | undefined;
  /** Paced runs: the requests per second asked for, and slots given up because no connection was free. */
  targetRate?: number;
  lostSlots?: number;
  /**
   * h2load, over the whole run: response body bytes received; 2xx answers completed (in its log);
   * and requests still in flight when it stopped, whose answers may have begun to arrive.
   * Together they tell how many gRPC calls returned a message.
   */
  bodyBytes?: number;
  okWholeRun?: number;
  inFlightAtEnd?: number;
}
