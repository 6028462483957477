// Exact per-request latencies, kept in a growable Float64Array: h2load reports only the mean and
// spread of its request times, so the percentiles are computed from its per-request log.
import type { LatencySummary } from './measurement.ts';

export class LatencyRecorder {
  #samples = new Float64Array(1 << 16);
  #count = 0;

  get count(): number {
    return this.#count;
  }

  record(milliseconds: number): void {
    if (this.#count === this.#samples.length) {
      const grown = new Float64Array(this.#samples.length * 2);
      grown.set(this.#samples);
      this.#samples = grown;
    }
    this.#samples[this.#count] = milliseconds;
    this.#count += 1;
  }

  /** Mean and nearest-rank percentiles, or null when nothing was recorded. */
  summarize(): LatencySummary | null {
    if (this.#count === 0) return null;
    const sorted = this.#samples.slice(0, this.#count).sort();
    let sum = 0;
    for (const value of sorted) sum += value;
    const at = (quantile: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(quantile * sorted.length) - 1)] ?? Number.NaN;
    return {
      mean: sum / sorted.length,
      p50: at(0.5),
      p90: at(0.9),
      p99: at(0.99),
      max: sorted[sorted.length - 1] ?? Number.NaN,
    };
  }
}

/** Adds one to `outcomes[key]`. */
export function countOutcome(outcomes: Record<string, number>, key: string): void {
  outcomes[key] = (outcomes[key] ?? 0) + 1;
}
