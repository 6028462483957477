// Which completions count. Warm-up and measurement are one continuous load, and only requests
// that complete inside the measured window count: the window opens on a server that is already
// in steady state (warm JIT and caches, every connection busy), and requests still in flight when
// it closes are neither waited for nor counted, exactly as requests in flight when it opened were
// not. Stopping the load between warm-up and measurement would instead start the measurement
// behind the warm-up's unfinished requests (with login, seconds of queued bcrypt work) and with
// every connection idle, which undercounts slow operations badly.
import { performance } from 'node:perf_hooks';
import { countOutcome, LatencyRecorder } from './latency-recorder.ts';
import type { LoadSummary } from './load-job.ts';

export class MeasurementWindow {
  readonly #opens: number;
  readonly #closes: number;
  readonly #latencies = new LatencyRecorder();
  readonly #outcomes: Record<string, number> = {};
  #total = 0;
  #ok = 0;
  #cpuAtOpen: NodeJS.CpuUsage | undefined;
  #cpuAtClose: NodeJS.CpuUsage | undefined;

  /** `start` is a performance.now() time; the window is [start + warmup, start + warmup + duration). */
  constructor(start: number, warmupSeconds: number, durationSeconds: number) {
    this.#opens = start + warmupSeconds * 1000;
    this.#closes = this.#opens + durationSeconds * 1000;
    // The generator's own CPU time over the window tells whether it, not the server, was the
    // limit: near 100 % of a core means the numbers measure the client.
    setTimeout(() => (this.#cpuAtOpen = process.cpuUsage()), Math.max(0, this.#opens - performance.now())).unref();
    setTimeout(() => (this.#cpuAtClose = process.cpuUsage()), Math.max(0, this.#closes - performance.now())).unref();
  }

  /** When the window closes, as a performance.now() time: no new request need start after it. */
  get closes(): number {
    return this.#closes;
  }

  /** Records one request that finished at `now` (performance.now()) with `outcome`. */
  complete(now: number, outcome: string, ok: boolean, latencyMs: number): void {
    if (now < this.#opens || now >= this.#closes) return;
    this.#total += 1;
    countOutcome(this.#outcomes, outcome);
    if (ok) {
      this.#ok += 1;
      this.#latencies.record(latencyMs);
    }
  }

  summarize(): LoadSummary {
    const durationSeconds = (this.#closes - this.#opens) / 1000;
    const open = this.#cpuAtOpen;
    // The load may end a moment before the closing timer fires.
    const close = this.#cpuAtClose ?? process.cpuUsage();
    const cpuMicros = open === undefined ? undefined : close.user + close.system - open.user - open.system;
    return {
      durationSeconds,
      total: this.#total,
      ok: this.#ok,
      errors: this.#total - this.#ok,
      requestsPerSecond: this.#total / durationSeconds,
      okPerSecond: this.#ok / durationSeconds,
      latencyMs: this.#latencies.summarize(),
      outcomes: this.#outcomes,
      generatorCpuPercent: cpuMicros === undefined ? null : (cpuMicros / 1e6 / durationSeconds) * 100,
    };
  }
}
