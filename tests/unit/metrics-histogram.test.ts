// The request-path histograms are Arcana's own (no allocation per observation): what they export
// must be exactly what prom-client's Histogram would export for the same observations.
import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/infrastructure/metrics.ts';

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

describe('request histograms', () => {
  it("when the same latencies are observed, then the exposition equals prom-client's, bucket bounds included", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const registry = new Registry();
    const reference = new Histogram({ name: 'arcana_http_requests_seconds', help: 'x', labelNames: ['route', 'method', 'status'], buckets: BUCKETS, registers: [registry] });
    // On a bound, between bounds, beyond the last, zero.
    const observations: [string, string, number, number][] = [
      ['/api/v1/users/{userId}', 'GET', 200, 0.001],
      ['/api/v1/users/{userId}', 'GET', 200, 0.0011],
      ['/api/v1/users/{userId}', 'GET', 404, 0.3],
      ['/api/v1/auth/login', 'POST', 401, 12],
      ['/api/v1/auth/login', 'POST', 401, 0],
      ['unmatched', 'GET', 404, 2.5],
    ];
    for (const [route, method, status, seconds] of observations) {
      metrics.httpRequest(route, method, status, seconds);
      reference.observe({ route, method, status: String(status) }, seconds);
    }
    const samples = (text: string) =>
      text
        .split('\n')
        .filter((line) => line.startsWith('arcana_http_requests_seconds'))
        .sort();
    const ours = samples(await metrics.registry.metrics());
    expect(ours.length).toBe(4 * (BUCKETS.length + 3));
    expect(ours).toEqual(samples(await registry.metrics()));
    expect(await metrics.registry.metrics()).toContain('# TYPE arcana_http_requests_seconds histogram');
  });
});
