// Prometheus metrics (prom-client), one registry per Application so that several apps in one
// process (the tests, the in-process topologies) never mix their counts. Served on a port of its
// own (METRICS_PORT), never on the public one: request rates, error codes and login outcomes are
// for operators, not for anyone who can reach the API.
//
// Every label has a bounded set of values, whatever clients send: REST routes are openapi.yaml's
// path templates (a path no operation matches is `unmatched`), RPC procedures only the served
// ones, codes and outcomes the API's own. An attacker cannot grow the registry by inventing paths.
import { createServer } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Latency buckets in seconds: from a cached read (~1 ms) to a bcrypt-bound login under load. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Audit detail reasons that become a label (the rest are counted without one). */
const REASONS = new Set(['unknown_user', 'wrong_password', 'inactive', 'throttled']);

export class Metrics {
  readonly registry = new Registry();
  readonly #httpRequests: Histogram<'route' | 'method' | 'status'>;
  readonly #rpcRequests: Histogram<'procedure' | 'protocol' | 'code'>;
  readonly #internalCalls: Histogram<'target' | 'procedure' | 'outcome'>;
  readonly #securityEvents: Counter<'type' | 'reason'>;
  readonly #cache: Counter<'result'>;

  constructor(options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.#httpRequests = new Histogram({
      name: 'arcana_http_requests_seconds',
      help: 'REST requests by openapi.yaml route, method and status, with their latency',
      labelNames: ['route', 'method', 'status'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#rpcRequests = new Histogram({
      name: 'arcana_rpc_requests_seconds',
      help: 'RPCs by procedure, protocol (grpc, grpc-web, connect) and Connect code, with their latency',
      labelNames: ['procedure', 'protocol', 'code'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#internalCalls = new Histogram({
      name: 'arcana_internal_calls_seconds',
      help: 'Calls to the layer below (split topologies) by target layer, procedure and outcome',
      labelNames: ['target', 'procedure', 'outcome'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#securityEvents = new Counter({
      name: 'arcana_security_events_total',
      help: 'Audited security events by type (LOGIN_SUCCEEDED, LOGIN_FAILED, TOKEN_REUSE_DETECTED, …) and failure reason',
      labelNames: ['type', 'reason'],
      registers,
    });
    this.#cache = new Counter({ name: 'arcana_cache_lookups_total', help: 'Cache lookups by result (hit, miss)', labelNames: ['result'], registers });
  }

  httpRequest(route: string, method: string, status: number, seconds: number): void {
    this.#httpRequests.observe({ route, method, status: String(status) }, seconds);
  }

  rpcRequest(procedure: string, protocol: string, code: string, seconds: number): void {
    this.#rpcRequests.observe({ procedure, protocol, code }, seconds);
  }

  internalCall(target: string, procedure: string, outcome: string, seconds: number): void {
    this.#internalCalls.observe({ target, procedure, outcome }, seconds);
  }

  securityEvent(type: string, reason: unknown): void {
    this.#securityEvents.inc({ type, reason: typeof reason === 'string' && REASONS.has(reason) ? reason : '' });
  }

  cacheLookup(hit: boolean): void {
    this.#cache.inc({ result: hit ? 'hit' : 'miss' });
  }

  /** A gauge read when scraped, e.g. the password-hash gate's queue or the audit backlog. */
  gauge(name: string, help: string, read: () => number): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(read());
      },
    });
  }

  /** A counter kept elsewhere (the database's query count), read when scraped. */
  counterFrom(name: string, help: string, read: () => number): void {
    let reported = 0;
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        const now = read();
        this.inc(Math.max(0, now - reported));
        reported = now;
      },
    });
  }
}

/** The RPC protocol of a request, by its content type. */
export function rpcProtocolOf(contentType: string | null): string {
  if (contentType === null) return 'connect';
  if (contentType.startsWith('application/grpc-web')) return 'grpc-web';
  if (contentType.startsWith('application/grpc')) return 'grpc';
  return 'connect';
}

/**
 * Serves `GET /metrics` (Prometheus text format) on its own port; anything else is 404. Returns
 * the bound address (port 0 picks a free one) and a close function.
 */
export async function serveMetrics(metrics: Metrics, port: number, host: string): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType, 'cache-control': 'no-store' }).end(text),
      () => res.writeHead(500).end(),
    );
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address !== null ? address.port : port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
