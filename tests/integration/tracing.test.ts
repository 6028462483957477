// OpenTelemetry traces as a collector receives them: an OTLP/HTTP receiver in the test decodes
// what each layer exports (JSON), and one public request through a layered deployment must come
// out as one trace, with spans from every layer linked server → internal client → internal
// server → cache and database, over both internal transports (Connect over HTTP/1.1, and gRPC).
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import http2 from 'node:http2';
import { Writable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runWithCallContext } from '../../src/infrastructure/call-context.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { traceLogFields } from '../../src/infrastructure/tracing.ts';
import { apiClient, PROTOCOLS } from '../helpers/protocols.ts';
import { startTopology } from '../../scripts/topology.ts';
import pg from 'pg';
import { ADMIN, bearer, loginAdmin, newUser, register, startTestServer, TEST_DATABASE_URL, TEST_ENV, type TestServer } from '../helpers/test-app.ts';
import { createMigratedSchema } from '../helpers/test-database.ts';

/** One span as the receiver decoded it, with its process's service.name. */
interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
  status: { code?: number };
  /** The exporting process's resource attributes. */
  resource: Record<string, unknown>;
  links?: { traceId: string; spanId: string }[];
  traceState?: string;
}

/**
 * The test client stands for a proxy in front that traces, which TRACE_TRUSTED_PROXIES names: its
 * `traceparent` is continued. A client's that is not is only linked to (see the last describe).
 */
const TRUSTED_CLIENT = { TRACE_TRUSTED_PROXIES: 'loopback' };

const SERVER = 2;
const CLIENT = 3;

interface AnyValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
const valueOf = (value: AnyValue): unknown => value.stringValue ?? (value.intValue === undefined ? undefined : Number(value.intValue)) ?? value.boolValue ?? value.doubleValue;
const attributesOf = (list: { key: string; value: AnyValue }[] = []) => Object.fromEntries(list.map(({ key, value }) => [key, valueOf(value)]));

/** A minimal OTLP/HTTP trace receiver: POST /v1/traces with a JSON ExportTraceServiceRequest. */
class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  readonly contentTypes = new Set<string>();
  #server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      this.contentTypes.add(req.headers['content-type'] ?? '');
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      const request = JSON.parse(body.toString('utf8')) as {
        resourceSpans: {
          resource: { attributes: { key: string; value: AnyValue }[] };
          scopeSpans: {
            spans: (Omit<ReceivedSpan, 'service' | 'attributes' | 'resource' | 'parentSpanId'> & { parentSpanId?: string; attributes?: { key: string; value: AnyValue }[] })[];
          }[];
        }[];
      };
      for (const resourceSpans of request.resourceSpans) {
        const resource = attributesOf(resourceSpans.resource.attributes);
        const service = String(resource['service.name']);
        for (const scope of resourceSpans.scopeSpans) {
          for (const span of scope.spans) this.spans.push({ ...span, service, resource, parentSpanId: span.parentSpanId ?? '', attributes: attributesOf(span.attributes) });
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    const address = this.#server.address();
    return `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  /** The spans of one trace, once `done` holds of them (spans arrive as each one ends). */
  async trace(traceId: string, done: (spans: ReceivedSpan[]) => boolean): Promise<ReceivedSpan[]> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const spans = this.spans.filter((span) => span.traceId === traceId);
      if (done(spans)) return spans;
      if (Date.now() > deadline) throw new Error(`trace ${traceId} incomplete: ${JSON.stringify(spans.map((s) => [s.service, s.name]))}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

/** A W3C traceparent from a client that traces, and its ids. */
function clientTraceparent(): { header: string; traceId: string; spanId: string } {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { header: `00-${traceId}-${spanId}-01`, traceId, spanId };
}

const parentOf = (spans: ReceivedSpan[], span: ReceivedSpan) => spans.find((candidate) => candidate.spanId === span.parentSpanId);

describe.each(['layered-http', 'layered-grpc'] as const)('traces in %s', (topology) => {
  const receiver = new OtlpReceiver();
  let t: TestServer;

  beforeAll(async () => {
    const endpoint = await receiver.start();
    // Each span is exported as it ends (no batch delay), and cached entries live one second,
    // so that the request below misses the cache and reaches the database.
    t = await startTestServer({ ...TRUSTED_CLIENT, OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_BSP_SCHEDULE_DELAY: '0', CACHE_TTL_SECONDS: '1' }, { topology });
  });

  afterAll(async () => {
    await t.close();
    await receiver.close();
  });

  it('when one REST request crosses the layers, then its spans form one trace: edge server → internal client → internal server → … → cache and database, each layer under its own service.name', async () => {
    const admin = await loginAdmin(t);
    const user = await register(t);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const client = clientTraceparent();
    const res = await t.request
      .get(`/api/v1/users/${user.id}`)
      .set(...bearer(admin))
      .set('traceparent', client.header);
    expect(res.status).toBe(200);

    const spans = await receiver.trace(
      client.traceId,
      (received) => received.some((s) => s.service === 'arcana-cloud-controller' && s.kind === SERVER) && received.some((s) => s.name.startsWith('db ')),
    );
    expect([...receiver.contentTypes]).toEqual(['application/json']);
    expect(new Set(spans.map((span) => span.service))).toEqual(new Set(['arcana-cloud-controller', 'arcana-cloud-service', 'arcana-cloud-repository']));

    // The edge continues the client's trace, named after the operation's route template.
    const edge = spans.find((span) => span.service === 'arcana-cloud-controller' && span.kind === SERVER);
    expect(edge).toMatchObject({ name: 'GET /api/v1/users/{userId}', parentSpanId: client.spanId });
    expect(edge?.attributes).toMatchObject({ 'http.route': '/api/v1/users/{userId}', 'http.response.status_code': 200, 'http.request.method': 'GET' });

    // Every other span's parent is in the trace: one tree under the edge.
    for (const span of spans) if (span !== edge) expect(parentOf(spans, span), `${span.service} ${span.name}`).toBeDefined();

    // A database read in the repository process, and the chain above it back to the edge.
    const db = spans.find((span) => span.service === 'arcana-cloud-repository' && span.name.startsWith('db '));
    expect(db?.kind).toBe(CLIENT);
    expect(db?.attributes['db.system.name']).toBe('postgresql');
    const chain: string[] = [];
    for (let span = db; span !== undefined; span = parentOf(spans, span)) chain.push(`${span.service.replace('arcana-cloud-', '')}:${span.kind === SERVER ? 'server' : 'client'}`);
    expect(chain).toEqual(['repository:client', 'repository:server', 'service:client', 'service:server', 'controller:client', 'controller:server']);
    // The internal client span names the layer it called; the server span there has the same procedure.
    const repositoryServer = parentOf(spans, db as ReceivedSpan) as ReceivedSpan;
    const serviceClient = parentOf(spans, repositoryServer) as ReceivedSpan;
    expect(serviceClient.attributes['arcana.target.layer']).toBe('repository');
    expect(serviceClient.name).toBe(repositoryServer.name);
    // Named after the internal protocol actually used on each side.
    const rpcSystem = topology === 'layered-grpc' ? 'grpc' : 'connect_rpc';
    expect(serviceClient.attributes['rpc.system.name']).toBe(rpcSystem);
    expect(repositoryServer.attributes['rpc.system.name']).toBe(rpcSystem);

    // The cache was asked first, and missed.
    const cacheGets = spans.filter((span) => span.service === 'arcana-cloud-repository' && span.name === 'cache get');
    expect(cacheGets.length).toBeGreaterThan(0);
    expect(cacheGets.some((span) => span.attributes['cache.hit'] === false)).toBe(true);
    for (const span of cacheGets) expect(parentOf(spans, span)?.kind).toBe(SERVER);
  });

  it('when an RPC arrives with a traceparent, then its server span continues that trace and the layers below join it', async () => {
    const admin = await loginAdmin(t);
    const user = await register(t);
    const client = clientTraceparent();
    const rpc = apiClient('connect-json', t.baseUrl);
    expect((await rpc.getUser(admin, user.id, { headers: { traceparent: client.header } })).code).toBe('ok');
    rpc.close();
    const spans = await receiver.trace(
      client.traceId,
      (received) => received.some((s) => s.service === 'arcana-cloud-controller' && s.kind === SERVER) && received.some((s) => s.service === 'arcana-cloud-service'),
    );
    const edge = spans.find((span) => span.service === 'arcana-cloud-controller' && span.kind === SERVER);
    expect(edge).toMatchObject({ name: 'arcana.user.v1.UserService/GetUser', parentSpanId: client.spanId });
    expect(edge?.attributes['rpc.response.status_code']).toBe('ok');
    expect(spans.some((span) => span.service === 'arcana-cloud-service' && span.kind === SERVER && parentOf(spans, span)?.service === 'arcana-cloud-controller')).toBe(true);
  });

  it("when a call runs out of its client's deadline, then its server span is marked an error", async () => {
    // A health watch ends only when its call does: with a 200 ms deadline, deadline_exceeded.
    const client = clientTraceparent();
    const session = http2.connect(t.baseUrl);
    try {
      const stream = session.request({
        ':method': 'POST',
        ':path': '/grpc.health.v1.Health/Watch',
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': '200m',
        traceparent: client.header,
      });
      const status = new Promise<string>((resolve) => stream.on('trailers', (trailers) => resolve(String(trailers['grpc-status']))));
      stream.resume();
      stream.end(Buffer.from([0, 0, 0, 0, 0]));
      expect(await status).toBe('4');
    } finally {
      session.destroy();
    }
    const spans = await receiver.trace(client.traceId, (received) => received.some((s) => s.service === 'arcana-cloud-controller' && s.kind === SERVER));
    const edge = spans.find((span) => span.service === 'arcana-cloud-controller' && span.kind === SERVER);
    expect(edge).toMatchObject({ name: 'grpc.health.v1.Health/Watch', attributes: { 'rpc.response.status_code': 'deadlineexceeded' } });
    // The code's spelling and the check for it once differed, so no such span was an error.
    expect(edge?.status.code).toBe(2);
  });

  it('when a request path is as long as the headers allow, then its span carries at most 1 KiB of it', async () => {
    // A 16 KB path made a 16.5 KB span, 8 MB batches and a 33 MB span queue (helper 63).
    const { header, traceId } = clientTraceparent();
    expect((await t.request.get(`/${'a'.repeat(12_000)}`).set('traceparent', header)).status).toBe(404);
    const [edge] = await receiver.trace(traceId, (spans) => spans.some((span) => span.kind === SERVER));
    expect(String(edge?.attributes['url.path']).length).toBeLessThanOrEqual(1024);
  });

  it('when a request comes without a traceparent, then a new trace starts at the edge', async () => {
    const before = receiver.spans.length;
    const user = await register(t);
    expect((await t.request.get(`/api/v1/users/${user.id}`).set(...bearer(user.accessToken))).status).toBe(200);
    const deadline = Date.now() + 10_000;
    let edge: ReceivedSpan | undefined;
    while (edge === undefined && Date.now() < deadline) {
      edge = receiver.spans.slice(before).find((span) => span.service === 'arcana-cloud-controller' && span.kind === SERVER && span.name === 'GET /api/v1/users/{userId}');
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(edge?.parentSpanId ?? 'none').toBe('');
    expect(edge?.traceId).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe('traces in microservices-grpc on Redis', () => {
  it('when requests go to the auth and the user service, then each joins its trace with one internal call, and its Redis cache lookups are spans in it', async () => {
    const receiver = new OtlpReceiver();
    const endpoint = await receiver.start();
    const t = await startTestServer(
      {
        ...TRUSTED_CLIENT,
        OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
        OTEL_BSP_SCHEDULE_DELAY: '0',
        REDIS_URL: 'redis://127.0.0.1:6379',
        REDIS_KEY_PREFIX: `trace-test-${process.pid}-${Date.now()}:`,
      },
      { topology: 'microservices-grpc' },
    );
    try {
      const admin = await loginAdmin(t);
      const user = await register(t);
      // GET a user goes to the user service only: it checks the token itself, with its cache,
      // rather than the controller asking the auth service first. GET /auth/me is the auth
      // service's.
      for (const [path, serving, notServing] of [
        [`/api/v1/users/${user.id}`, 'arcana-cloud-user-service', 'arcana-cloud-auth-service'],
        ['/api/v1/auth/me', 'arcana-cloud-auth-service', 'arcana-cloud-user-service'],
      ] as const) {
        const client = clientTraceparent();
        expect(
          (
            await t.request
              .get(path)
              .set(...bearer(admin))
              .set('traceparent', client.header)
          ).status,
        ).toBe(200);
        const wanted = ['arcana-cloud-controller', serving];
        const spans = await receiver.trace(client.traceId, (received) => wanted.every((service) => received.some((s) => s.service === service && s.kind === SERVER)));
        // Spans of another process would have been exported by now (no batching delay).
        await new Promise((resolve) => setTimeout(resolve, 300));
        const all = receiver.spans.filter((span) => span.traceId === client.traceId);
        expect(all.filter((span) => span.service === notServing)).toEqual([]);
        const edge = all.find((span) => span.service === 'arcana-cloud-controller' && span.kind === SERVER);
        for (const span of all) if (span !== edge) expect(parentOf(all, span), `${span.service} ${span.name}`).toBeDefined();
        expect(all.filter((span) => span.service === 'arcana-cloud-controller' && span.kind === CLIENT)).toHaveLength(1);
        // With a shared cache, the service process reads Redis before calling the repository
        // layer (which, on a miss, reads it too).
        const redisLookups = spans.filter((span) => span.name === 'cache get' && span.attributes['db.system.name'] === 'redis');
        expect(redisLookups.some((span) => span.service === serving)).toBe(true);
        for (const span of redisLookups) expect(parentOf(all, span)?.kind).toBe(SERVER);
      }
    } finally {
      await t.close();
      await receiver.close();
    }
  });
});

describe('trace ids in logs', () => {
  it('when a traced request is served, then its "request completed" line carries the trace id, and lines logged inside it do too', async () => {
    const receiver = new OtlpReceiver();
    const endpoint = await receiver.start();
    const lines: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    const logger = createLogger({ level: 'info', destination, mixin: traceLogFields });
    const t = await startTestServer({ ...TRUSTED_CLIENT, OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_BSP_SCHEDULE_DELAY: '0' }, { logger, topology: 'monolithic' });
    try {
      const client = clientTraceparent();
      expect((await t.request.get('/health').set('traceparent', client.header)).status).toBe(200);
      const line = lines.find((l) => l.msg === 'request completed' && l.path === '/health');
      expect(line?.traceId).toBe(client.traceId);
      // Any line logged while a traced request's work runs gets the ids from the logger's mixin.
      const span = { spanContext: () => ({ traceId: client.traceId, spanId: client.spanId, traceFlags: 1 }) } as never;
      runWithCallContext({ requestId: 'r', span }, () => logger.info('inside'));
      expect(lines.find((l) => l.msg === 'inside')).toMatchObject({ traceId: client.traceId, spanId: client.spanId });
      logger.info('outside');
      expect(lines.find((l) => l.msg === 'outside')?.traceId).toBeUndefined();
    } finally {
      await t.close();
      await receiver.close();
    }
  });
});

describe('traces of real processes', () => {
  it('when layered-grpc runs as three `node src/main.js` processes, then one request is one trace with spans from three pids, and each process logs the trace id', async () => {
    const receiver = new OtlpReceiver();
    const endpoint = await receiver.start();
    const schema = `test_trace_${Date.now()}_${randomBytes(3).toString('hex')}`;
    const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
    await createMigratedSchema(admin, schema);
    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('schema', schema);
    const lines: { layer: string; line: string }[] = [];
    const topology = await startTopology({
      name: 'layered-grpc',
      env: {
        PATH: process.env.PATH,
        ...TEST_ENV,
        ...TRUSTED_CLIENT,
        LOG_LEVEL: 'debug',
        DATABASE_URL: url.toString(),
        OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
        OTEL_BSP_SCHEDULE_DELAY: '100',
      },
      onLine: (layer, line) => lines.push({ layer, line }),
    });
    try {
      const post = (path: string, body: unknown) =>
        fetch(`${topology.baseUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const login = (await (await post('/api/v1/auth/login', { usernameOrEmail: ADMIN.username, password: ADMIN.password })).json()) as {
        data: { tokens: { accessToken: string } };
      };
      const registered = (await (await post('/api/v1/auth/register', newUser('trace'))).json()) as { data: { user: { id: number } } };
      const client = clientTraceparent();
      const res = await fetch(`${topology.baseUrl}/api/v1/users/${registered.data.user.id}`, {
        headers: { authorization: `Bearer ${login.data.tokens.accessToken}`, traceparent: client.header },
      });
      expect(res.status).toBe(200);
      const spans = await receiver.trace(
        client.traceId,
        (received) => new Set(received.map((span) => span.service)).size === 3 && received.some((s) => s.service === 'arcana-cloud-controller' && s.kind === SERVER),
      );
      const pids = new Map(spans.map((span) => [span.service, span.resource['process.pid']]));
      expect(new Set(pids.values()).size).toBe(3);
      expect(pids.get('arcana-cloud-controller')).toBe(topology.layers.find((layer) => layer.name === 'controller')?.pid);
      // The controller's request line, and the lower layers' per-call debug lines, name the trace.
      const logged = (layer: string) => lines.filter((entry) => entry.layer === layer && entry.line.includes(client.traceId));
      expect(logged('controller').some((entry) => entry.line.includes('"request completed"'))).toBe(true);
      expect(logged('service').length).toBeGreaterThan(0);
      expect(logged('repository').length).toBeGreaterThan(0);
    } finally {
      await topology.stop();
      await receiver.close();
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await admin.end();
    }
  }, 90_000);
});

describe('traces of clients outside the trust (no TRACE_TRUSTED_PROXIES)', () => {
  it('when a client sends a traceparent (sampled or not) and a tracestate, then over every protocol its request starts a trace of ours, sampled, that links to the client span and carries no tracestate', async () => {
    // Found by an attacker (helper 92): a public client chose the trace id of its requests'
    // spans and log lines, turned their tracing off with a sampled flag of 0, and had its
    // tracestate stored and passed on to every layer.
    const receiver = new OtlpReceiver();
    const endpoint = await receiver.start();
    // TRUST_PROXY as the Kubernetes manifests set it (one proxy in front, whoever the peer is)
    // does not make a client's trace context ours: helper 94 found it did.
    const t = await startTestServer({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_BSP_SCHEDULE_DELAY: '0', TRUST_PROXY: '1' }, { topology: 'monolithic' });
    try {
      const user = await register(t);
      for (const protocol of PROTOCOLS) {
        for (const flags of ['01', '00']) {
          const client = clientTraceparent();
          const headers = { traceparent: `00-${client.traceId}-${client.spanId}-${flags}`, tracestate: 'evil=1,congo=t61rcWkgMzE' };
          const rpc = apiClient(protocol, t.baseUrl);
          const before = receiver.spans.length;
          try {
            expect((await rpc.me(user.accessToken, { headers })).code).toBe('ok');
          } finally {
            rpc.close();
          }
          const label = `${protocol}, flags ${flags}`;
          const deadline = Date.now() + 10_000;
          let edge: ReceivedSpan | undefined;
          while (edge === undefined && Date.now() < deadline) {
            edge = receiver.spans.slice(before).find((span) => span.kind === SERVER && span.links?.some((link) => link.spanId === client.spanId));
            await new Promise((resolve) => setTimeout(resolve, 25));
          }
          expect(edge, `${label}: a span linking to the client's`).toBeDefined();
          expect(edge?.traceId, label).not.toBe(client.traceId);
          expect(edge?.parentSpanId ?? '', label).toBe('');
          expect(edge?.links, label).toEqual([expect.objectContaining({ traceId: client.traceId, spanId: client.spanId })]);
          expect(edge?.traceState ?? '', label).toBe('');
          expect(
            receiver.spans.some((span) => span.traceId === client.traceId),
            `${label}: nothing in the client's trace`,
          ).toBe(false);
        }
      }
    } finally {
      await t.close();
      await receiver.close();
    }
  });
});
