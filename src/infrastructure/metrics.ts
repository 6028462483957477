// Prometheus metrics (prom-client), one registry per Application so that several apps in one
// process (the tests, the in-process topologies) never mix their counts. Served on a port of its
// own (METRICS_PORT), never on the public one: request rates, error codes and login outcomes are
// for operators, not for anyone who can reach the API.
//
// Every label has a bounded set of values, whatever clients send: REST routes are openapi.yaml's
// path templates (a path no operation matches is `unmatched`), RPC procedures only the served
// ones, codes and outcomes the API's own. An attacker cannot grow the registry by inventing paths.
import { createServer, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';
import type { Counter, LabelValues, Registry } from 'prom-client';

let promClient: typeof PromClient | undefined;
/**
 * prom-client, loaded by the first Metrics: a process without METRICS_PORT never loads it (about
 * 40 ms of its start-up). It is CommonJS, so `require` gives the very module an import would.
 */
const prom = (): typeof PromClient => (promClient ??= createRequire(import.meta.url)('prom-client') as typeof PromClient);

/** Latency buckets in seconds: from a cached read (~1 ms) to a bcrypt-bound login under load. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Audit detail reasons that become a label (the rest are counted without one). */
const REASONS = new Set(['unknown_user', 'wrong_password', 'inactive', 'throttled']);

/** A login's outcome as `arcana_logins_total` names it, by LOGIN_FAILED reason. */
const LOGIN_OUTCOMES: Record<string, string> = { unknown_user: 'unknown_user', wrong_password: 'wrong_password', inactive: 'inactive', throttled: 'locked_out' };

/**
 * The child of a metric for one combination of label values, made on first use and kept, found
 * again with two or three Map lookups (no string built). Label values come from closed sets, so
 * the maps stay small.
 */
class Children<C> {
  readonly #root = new Map<string, unknown>();
  readonly #make: (values: string[]) => C;

  constructor(make: (values: string[]) => C) {
    this.#make = make;
  }

  get(a: string, b: string, c?: string): C {
    let level = this.#root.get(a) as Map<string, unknown> | undefined;
    if (level === undefined) this.#root.set(a, (level = new Map()));
    if (c === undefined) {
      let child = level.get(b) as C | undefined;
      if (child === undefined) level.set(b, (child = this.#make([a, b])));
      return child;
    }
    let inner = level.get(b) as Map<string, C> | undefined;
    if (inner === undefined) level.set(b, (inner = new Map()));
    let child = inner.get(c);
    if (child === undefined) inner.set(c, (child = this.#make([a, b, c])));
    return child;
  }
}

/** Children of a labelled metric by the values of its labels, in `names` order. */
function childrenOf<T extends string, C>(metric: { labels(labels: LabelValues<T>): C }, names: readonly T[]): Children<C> {
  return new Children((values) => metric.labels(Object.fromEntries(names.map((name, i) => [name, values[i] ?? ''])) as LabelValues<T>));
}

/** One label combination of a RequestHistogram: plain numbers, bumped in place. */
interface HistogramChild {
  readonly labels: Record<string, string>;
  /** Observations per bucket (not cumulative); the last one is +Inf. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

/**
 * A Prometheus histogram for the request path. prom-client's Histogram, even through a child from
 * `labels()`, builds a labels object and hashes it into a string on every observation (about 1 µs
 * of CPU on the shared machine); this one keeps each label combination's buckets as a typed array
 * found through `Children`, so an observation is a few Map lookups, a bucket search and three
 * additions, allocating nothing. It registers itself in the registry and exports what prom-client's
 * Histogram would (`_bucket` with `le` first and cumulative, `_sum`, `_count`).
 */
class RequestHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #buckets: readonly number[];
  readonly #all: HistogramChild[] = [];
  readonly #children: Children<HistogramChild>;

  constructor(options: { name: string; help: string; labelNames: readonly string[]; buckets: readonly number[]; registry: Registry }) {
    this.name = options.name;
    this.help = options.help;
    this.#buckets = options.buckets;
    this.#children = new Children((values) => {
      const child: HistogramChild = {
        labels: Object.fromEntries(options.labelNames.map((name, i) => [name, values[i] ?? ''])),
        counts: new Float64Array(options.buckets.length + 1),
        sum: 0,
        count: 0,
      };
      this.#all.push(child);
      return child;
    });
    options.registry.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  observe(a: string, b: string, c: string, seconds: number): void {
    const child = this.#children.get(a, b, c);
    const buckets = this.#buckets;
    let i = 0;
    while (i < buckets.length && seconds > (buckets[i] as number)) i += 1;
    child.counts[i] = (child.counts[i] as number) + 1;
    child.sum += seconds;
    child.count += 1;
  }

  /** The samples, as the registry formats them. */
  get(): { name: string; help: string; type: string; aggregator: string; values: { metricName: string; labels: Record<string, string | number>; value: number }[] } {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const child of this.#all) {
      let cumulative = 0;
      for (let i = 0; i <= this.#buckets.length; i += 1) {
        cumulative += child.counts[i] as number;
        values.push({ metricName: `${this.name}_bucket`, labels: { le: i < this.#buckets.length ? (this.#buckets[i] as number) : '+Inf', ...child.labels }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels: child.labels, value: child.sum });
      values.push({ metricName: `${this.name}_count`, labels: child.labels, value: child.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    for (const child of this.#all) {
      child.counts.fill(0);
      child.sum = 0;
      child.count = 0;
    }
  }
}

/** Database connection pool use, as the database module reads it. */
export interface PoolUse {
  /** Connections open, idle among them, requests waiting for one, and the pool's bound. */
  total: number;
  idle: number;
  waiting: number;
  max: number;
}

/** A job queue's depth by state (waiting, active, delayed, failed…). */
export type QueueDepth = { queue: string; state: string; count: number }[];

export class Metrics {
  readonly registry: Registry = new (prom().Registry)();
  readonly #httpRequests: RequestHistogram;
  readonly #rpcRequests: RequestHistogram;
  readonly #internalCalls: RequestHistogram;
  readonly #securityEvents: Counter<'type' | 'reason'>;
  readonly #logins: Counter<'outcome'>;
  readonly #lockouts: Counter;
  readonly #tokenReuse: Counter;
  readonly #jobFailures: Counter<'queue'>;
  readonly #events: Children<{ inc(): void }>;
  /** Cache lookups, counted in plain fields and handed to the counter when scraped. */
  #cacheHits = 0;
  #cacheMisses = 0;

  constructor(options: { defaultMetrics?: boolean } = {}) {
    const { Counter, collectDefaultMetrics } = prom();
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.#httpRequests = new RequestHistogram({
      name: 'arcana_http_requests_seconds',
      help: 'REST requests by openapi.yaml route, method and status, with their latency',
      labelNames: ['route', 'method', 'status'],
      buckets: LATENCY_BUCKETS,
      registry: this.registry,
    });
    this.#rpcRequests = new RequestHistogram({
      name: 'arcana_rpc_requests_seconds',
      help: 'RPCs by procedure, protocol (grpc, grpc-web, connect) and Connect code, with their latency',
      labelNames: ['procedure', 'protocol', 'code'],
      buckets: LATENCY_BUCKETS,
      registry: this.registry,
    });
    this.#internalCalls = new RequestHistogram({
      name: 'arcana_internal_calls_seconds',
      help: 'Calls to the layer below (split topologies) by target layer, procedure and outcome',
      labelNames: ['target', 'procedure', 'outcome'],
      buckets: LATENCY_BUCKETS,
      registry: this.registry,
    });
    this.#securityEvents = new Counter({
      name: 'arcana_security_events_total',
      help: 'Audited security events by type (LOGIN_SUCCEEDED, LOGIN_FAILED, TOKEN_REUSE_DETECTED, …) and failure reason',
      labelNames: ['type', 'reason'],
      registers,
    });
    const lookups = { hit: 0, miss: 0 };
    const current = () => ({ hit: this.#cacheHits, miss: this.#cacheMisses });
    new Counter({
      name: 'arcana_cache_lookups_total',
      help: 'Cache lookups by result (hit, miss)',
      labelNames: ['result'],
      registers,
      collect() {
        const now = current();
        this.inc({ result: 'hit' }, now.hit - lookups.hit);
        this.inc({ result: 'miss' }, now.miss - lookups.miss);
        Object.assign(lookups, now);
      },
    });
    this.#logins = new Counter({
      name: 'arcana_logins_total',
      help: 'Login attempts by outcome: succeeded, wrong_password, unknown_user, inactive, locked_out (refused by a lockout before any password check)',
      labelNames: ['outcome'],
      registers,
    });
    this.#lockouts = new Counter({
      name: 'arcana_login_lockout_refusals_total',
      help: 'Login attempts refused because their account and address (or device) are locked out',
      registers,
    });
    this.#tokenReuse = new Counter({ name: 'arcana_token_reuse_detections_total', help: 'Rotated refresh tokens presented again (the token family is then revoked)', registers });
    this.#jobFailures = new Counter({
      name: 'arcana_job_failures_total',
      help: 'Background job runs that failed (each failed attempt), by queue (audit, maintenance)',
      labelNames: ['queue'],
      registers,
    });

    this.#events = childrenOf(this.#securityEvents, ['type', 'reason']);
    // Every outcome from the start, so a rate over a series that has not happened yet is 0, not absent.
    for (const outcome of ['succeeded', ...Object.values(LOGIN_OUTCOMES)]) this.#logins.inc({ outcome }, 0);
    this.#jobFailures.inc({ queue: 'audit' }, 0);
    this.#jobFailures.inc({ queue: 'maintenance' }, 0);
  }

  httpRequest(route: string, method: string, status: number, seconds: number): void {
    this.#httpRequests.observe(route, method, statusText(status), seconds);
  }

  rpcRequest(procedure: string, protocol: string, code: string, seconds: number): void {
    this.#rpcRequests.observe(procedure, protocol, code, seconds);
  }

  internalCall(target: string, procedure: string, outcome: string, seconds: number): void {
    this.#internalCalls.observe(target, procedure, outcome, seconds);
  }

  /** An audited security event; logins, lockout refusals and token reuse also get series of their own. */
  securityEvent(type: string, reason: unknown): void {
    const known = typeof reason === 'string' && REASONS.has(reason) ? reason : '';
    this.#events.get(type, known).inc();
    if (type === 'LOGIN_SUCCEEDED') this.#logins.inc({ outcome: 'succeeded' });
    else if (type === 'LOGIN_FAILED') {
      this.#logins.inc({ outcome: LOGIN_OUTCOMES[known] ?? 'other' });
      if (known === 'throttled') this.#lockouts.inc();
    } else if (type === 'TOKEN_REUSE_DETECTED') this.#tokenReuse.inc();
  }

  cacheLookup(hit: boolean): void {
    if (hit) this.#cacheHits += 1;
    else this.#cacheMisses += 1;
  }

  /** A background job run that failed. */
  jobFailed(queue: string): void {
    this.#jobFailures.inc({ queue });
  }

  /** Job queue depth by queue and state, read (asynchronously: BullMQ asks Redis) when scraped. */
  queueDepth(read: () => Promise<QueueDepth>): void {
    const { Gauge } = prom();
    new Gauge({
      name: 'arcana_job_queue_depth',
      help: 'Background jobs by queue and state (waiting, active, delayed, failed); in-process runners report their audit backlog as waiting',
      labelNames: ['queue', 'state'],
      registers: [this.registry],
      async collect() {
        this.reset();
        // Redis being away must not fail the whole scrape: the depth is then absent.
        const depths = await read().catch(() => []);
        for (const { queue, state, count } of depths) this.set({ queue, state }, count);
      },
    });
  }

  /** Database connection pool use, read when scraped (for a database with a pool). */
  databasePool(read: () => PoolUse | undefined): void {
    const { Gauge } = prom();
    const gauge = (name: string, help: string, pick: (use: PoolUse) => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          const use = read();
          if (use !== undefined) this.set(pick(use));
        },
      });
    gauge('arcana_db_pool_connections_in_use', 'Database connections checked out of the pool now', (use) => use.total - use.idle);
    gauge('arcana_db_pool_connections_idle', 'Open database connections idle in the pool', (use) => use.idle);
    gauge('arcana_db_pool_waiting', 'Queries waiting for a free database connection', (use) => use.waiting);
    gauge('arcana_db_pool_connections_max', 'The pool bound: connections at most', (use) => use.max);
  }

  /** A gauge read when scraped, e.g. the password-hash gate's queue or the audit backlog. */
  gauge(name: string, help: string, read: () => number): void {
    const { Gauge } = prom();
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
    const { Counter } = prom();
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

/** HTTP statuses as label text, made once each rather than per request. */
const STATUS_TEXT = Array.from({ length: 600 }, (_, status) => String(status));
const statusText = (status: number): string => STATUS_TEXT[status] ?? String(status);

/** The RPC protocol of a request, by its content type. */
export function rpcProtocolOf(contentType: string | null): string {
  if (contentType === null) return 'connect';
  if (contentType.startsWith('application/grpc-web')) return 'grpc-web';
  if (contentType.startsWith('application/grpc')) return 'grpc';
  return 'connect';
}

/** Connections the metrics port holds at once: scrapers, not clients (see serveMetrics). */
const METRICS_MAX_CONNECTIONS = 32;

/**
 * Serves `GET /metrics` (Prometheus text format) on its own port; anything else is 404. Returns
 * the bound address (port 0 picks a free one) and a close function, which drops the connections
 * still open (a scrape lost at shutdown is retried by the next).
 *
 * A scrape is one request per connection: the answer says `close`, and Node answers anything
 * pipelined behind it with a bare 503 without rendering the registry. At most
 * METRICS_MAX_CONNECTIONS are open, the newest taking the place of the oldest that sent nothing.
 * One connection that pipelined 2 000 scrapes and read nothing had each rendered and buffered,
 * 250 MB of RSS, and a request left half-sent held the shutdown until its timeout killed the
 * process (helper 147).
 */
export async function serveMetrics(metrics: Metrics, port: number, host: string): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer({ connectionsCheckingInterval: 1_000 }, (req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { connection: 'close' }).end();
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType, 'cache-control': 'no-store', connection: 'close' }).end(text),
      () => res.writeHead(500, { connection: 'close' }).end(),
    );
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  server.maxRequestsPerSocket = 1;
  // At the cap, a new connection takes the place of the oldest one that has sent no request:
  // with Node's maxConnections, one client holding 32 idle connections (and opening them again as
  // they timed out) kept every scrape out for as long as it liked (helper 151). A scraper sends
  // its request at once, so its connection is not the one given up.
  const open = new Set<Socket>();
  const asking = new WeakSet<Socket>();
  server.on('connection', (socket: Socket) => {
    if (open.size >= METRICS_MAX_CONNECTIONS) {
      let idle: Socket | undefined;
      for (const held of open) {
        if (!asking.has(held)) {
          idle = held;
          break;
        }
      }
      if (idle === undefined) {
        socket.destroy();
        return;
      }
      idle.destroy();
      open.delete(idle);
    }
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
  server.on('request', (req: IncomingMessage) => asking.add(req.socket));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address !== null ? address.port : port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
