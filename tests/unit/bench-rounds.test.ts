// The benchmark's judgement of alternated rounds (--rounds): a split topology's rate is compared
// with the monolith's of the same round, so that the host's drift between minutes cancels out.
import { describe, expect, it } from 'vitest';
import { computeTargets, formatMatrix, type ResultRow } from '../../bench/report.ts';
import type { Measurement } from '../../bench/measurement.ts';
import type { TopologyName } from '../../bench/settings.ts';

function row(target: TopologyName | 'bare', okPerSecond: number, p99: number, round?: number): ResultRow {
  const measurement = { okPerSecond, requestsPerSecond: okPerSecond, latencyMs: { mean: p99 / 3, p50: p99 / 4, p90: p99 / 2, p99, max: p99 * 2 } } as Measurement;
  return { target, topology: target, variant: 'default', ...(round === undefined ? {} : { round }), protocol: 'rest', scenario: 'get-user', measurement };
}

function judge(results: ResultRow[]) {
  const checks = computeTargets({ results, startup: { restarts: {}, pglite: [], bare: null }, bcryptCeiling: null, soak: null, idleRss: {} });
  return (name: string) => checks.find((check) => check.name === name);
}

describe('bench rounds', () => {
  it('when the host slows between rounds, then each split row is judged against its own round’s monolith, not the median of all', () => {
    // The monolith ran at 4 000, 8 000 and 6 000 req/s in three rounds; layered-grpc at 0.6×,
    // 0.6× and 0.4× of its round's. Medians of the rates would say 2 400 ÷ 6 000 = 0.4.
    const results = [
      row('bare', 5_000, 20),
      ...[4_000, 8_000, 6_000].map((rate, index) => row('monolithic', rate, 30, index + 1)),
      ...[2_400, 4_800, 2_400].map((rate, index) => row('layered-grpc', rate, [40, 60, 45][index] as number, index + 1)),
    ];
    const check = judge(results);
    expect(check('layered-grpc ÷ monolithic, REST get-user req/s')).toMatchObject({ target: '≥ 0.5', met: true });
    expect(check('layered-grpc ÷ monolithic, REST get-user req/s')?.value).toBeCloseTo(0.6);
    // The p99 is the rounds' median; the bare server, measured once, is every round's ceiling.
    expect(check('layered-grpc REST get-user p99 (ms)')).toMatchObject({ value: 45, target: '≤ 50', met: true });
    expect(check('monolithic REST get-user req/s ÷ bare point read')?.value).toBeCloseTo(1.2);
    expect(formatMatrix(results)).toMatch(/\| 6000 \(30\.0\) \| +2400 \(45\.0\) \|/);
  });

  it('when there is one round, then the rows are compared as they were measured, and a slow split row is not met', () => {
    const check = judge([row('bare', 5_000, 20), row('monolithic', 6_000, 30), row('layered-grpc', 1_800, 80)]);
    expect(check('layered-grpc ÷ monolithic, REST get-user req/s')).toMatchObject({ met: false });
    expect(check('layered-grpc ÷ monolithic, REST get-user req/s')?.value).toBeCloseTo(0.3);
    expect(check('layered-grpc REST get-user p99 (ms)')).toMatchObject({ value: 80, met: false });
  });
});
