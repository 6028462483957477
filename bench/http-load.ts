// HTTP/1.1 load with autocannon: keep-alive connections, each with one request in flight.
import autocannon from 'autocannon';
import { performance } from 'node:perf_hooks';
import { MeasurementWindow } from './measurement-window.ts';
import type { HttpLoadJob, HttpRequestSpec, LoadSummary } from './load-job.ts';

/**
 * Runs `job` for its warm-up plus duration as one continuous load and summarises the responses
 * that completed within the measured part (see MeasurementWindow).
 */
export function runHttpLoad(job: HttpLoadJob): Promise<LoadSummary> {
  let clientIndex = 0;
  const window = new MeasurementWindow(performance.now(), job.warmupSeconds, job.durationSeconds);

  return new Promise<LoadSummary>((resolve, reject) => {
    const instance = autocannon(
      {
        url: job.baseUrl,
        connections: job.concurrency,
        duration: job.warmupSeconds + job.durationSeconds,
        timeout: job.timeoutSeconds,
        // Bounds the run in count too; autocannon requires it to be at least one per connection.
        maxOverallRequests: Math.max(job.maxRequests, job.concurrency),
        requests: toAutocannonRequests(job.requests, 0),
        // Every connection walks the request list from a different starting point, so the
        // connections do not ask for the same user in lock-step.
        setupClient: (client) => {
          const offset = Math.floor((clientIndex * job.requests.length) / job.concurrency);
          clientIndex += 1;
          client.setRequests(toAutocannonRequests(job.requests, offset));
        },
      },
      (error: unknown) => {
        if (error !== null && error !== undefined) reject(error instanceof Error ? error : new Error(String(error)));
        else resolve(window.summarize());
      },
    );
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      window.complete(performance.now(), String(statusCode), statusCode >= 200 && statusCode < 300, responseTime);
    });
    // Connection errors and timeouts never produce a 'response'.
    instance.on('reqError', (error: unknown) => {
      const kind = error instanceof Error && /timeout/i.test(error.message) ? 'timeout' : 'connectionError';
      window.complete(performance.now(), kind, false, 0);
    });
  });
}

/** Fresh request objects (autocannon caches the encoded request on them), rotated by `offset`. */
function toAutocannonRequests(requests: HttpRequestSpec[], offset: number): autocannon.Request[] {
  const start = requests.length === 0 ? 0 : offset % requests.length;
  return [...requests.slice(start), ...requests.slice(0, start)].map((request) => ({
    method: request.method,
    path: request.path,
    headers: { ...request.headers },
    ...(request.body === undefined ? {} : { body: request.body }),
  }));
}
