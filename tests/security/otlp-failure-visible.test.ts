// An OTLP collector that refuses every export: the process says so in its log, at most once a
// minute. Found by an attacking helper (133): the SDK tells export failures (and spans dropped
// from a full queue) only to its `diag` logger, which nothing set, so every span was lost without
// a word.
import { createServer, type Server } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { runWithCallContext } from '../../src/infrastructure/call-context.ts';
import { rateLimitedWarning } from '../../src/infrastructure/logger.ts';
import { capturingLogger, loginAdmin, startTestServer } from '../helpers/test-app.ts';

async function collectorAnswering(status: number): Promise<{ endpoint: string; exports: () => number; close: () => Promise<void> }> {
  let exports = 0;
  const server: Server = createServer((req, res) => {
    exports += 1;
    req.resume().on('end', () => res.writeHead(status).end('refused'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    endpoint: `http://127.0.0.1:${port}`,
    exports: () => exports,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('an OTLP collector that refuses every export', () => {
  it('when every export is answered 500 (or 400), then the process logs that its spans are being lost, a bounded number of times', async () => {
    const logs = capturingLogger('info');
    const collector = await collectorAnswering(500);
    const t = await startTestServer({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint, OTEL_BSP_SCHEDULE_DELAY: '100' }, { logger: logs.logger, topology: 'monolithic' });
    try {
      const admin = await loginAdmin(t);
      for (let round = 0; round < 20; round += 1) {
        await Promise.all(
          Array.from({ length: 10 }, () => fetch(`${t.baseUrl}/api/v1/auth/me`, { headers: { authorization: `Bearer ${admin}` } }).then((res) => res.arrayBuffer())),
        );
        await sleep(50);
      }
      await sleep(1_000);
      expect(collector.exports()).toBeGreaterThan(5);
      const about = logs.lines.filter((line) => line.level !== 'info' && line.level !== '30' && /span|trace|export|otlp/i.test(JSON.stringify(line)));
      expect({ warned: about.length > 0, bounded: about.length <= 5 }).toEqual({ warned: true, bounded: true });
      // A failed batch holds many requests' spans: its lines name none of them, though the SDK's
      // export timer was armed inside one (helper 160).
      expect(about.map((line) => line.requestId ?? line.traceId)).toEqual(about.map(() => undefined));
    } finally {
      await t.close().catch(() => undefined);
      await collector.close();
    }
  }, 60_000);
});

describe('a warning logged at most once per interval', () => {
  it('when one request opens its window and others recur in it, then the summary of theirs names no request', async () => {
    const logs = capturingLogger('info');
    const warn = rateLimitedWarning(logs.logger, 'refusals', 100);
    for (const requestId of ['request-a', 'request-b', 'request-c']) runWithCallContext({ requestId }, () => warn({ limit: 1 }));
    await sleep(250);
    const summary = logs.lines.find((line) => line.msg === 'refusals (more in the last interval)');
    expect({ refused: summary?.refused, requestId: summary?.requestId }).toEqual({ refused: 2, requestId: undefined });
    // The first line is the first request's own.
    expect(logs.lines.find((line) => line.msg === 'refusals')?.requestId).toBe('request-a');
  });
});
