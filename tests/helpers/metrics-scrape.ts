// A test app's Prometheus metrics, served on a free loopback port as METRICS_PORT serves them in
// a deployment (any non-zero METRICS_PORT turns them on), and read back.
import { serveMetrics } from '../../src/infrastructure/metrics.ts';
import type { TestServer } from './test-app.ts';

export interface MetricsScrape {
  /** The loopback port the metrics are served on. */
  port: number;
  /** The whole `/metrics` text, as a scraper reads it. */
  scrape(): Promise<string>;
  /** The sum of one metric's samples whose labels include `labels`, read now. */
  sum(name: string, labels?: Record<string, string>): Promise<number>;
  close(): Promise<void>;
}

export async function serveTestMetrics(t: TestServer): Promise<MetricsScrape> {
  if (t.app.metrics === undefined) throw new Error('metrics are not on (set METRICS_PORT)');
  const served = await serveMetrics(t.app.metrics, 0, '127.0.0.1');
  const scrape = async () => (await fetch(`http://127.0.0.1:${served.port}/metrics`)).text();
  return {
    port: served.port,
    scrape,
    async sum(name, labels = {}) {
      const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
      let total = 0;
      for (const line of (await scrape()).split('\n')) {
        if (!line.startsWith(`${name}{`)) continue;
        const labelText = line.slice(name.length).split(' ')[0] ?? '';
        if (wanted.every((pair) => labelText.includes(pair))) total += Number(line.split(' ').at(-1));
      }
      return total;
    },
    close: served.close,
  };
}
