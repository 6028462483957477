// The internal client's transport on its own, against real servers on loopback: which process
// gets each call, which failures are retried, and what travels with a call. CounterStoreService
// serves as the subject because its contract has a read (PeekCounter, NO_SIDE_EFFECTS) and a
// write that must never run twice (IncrementCounter, no idempotency).
import { ConnectError, createClient } from '@connectrpc/connect';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { runWithCallContext, timeoutFromHeaders } from '../../src/infrastructure/call-context.ts';
import { createLayerTransport } from '../../src/communication/layer-transport.ts';
import { UnavailableError } from '../../src/domain/errors.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { counterStore, serveCounterStore } from '../helpers/counter-layer.ts';
import { capturingLogger } from '../helpers/test-app.ts';

const logger = createLogger({ level: 'silent' });

/** A counter-store process that records what reached it and can misbehave on demand. */
interface FakeLayer {
  url: string;
  calls: { method: string; headers: Headers }[];
  /** What the next calls do: answer, drop the connection mid-call, or answer late. */
  mode: 'ok' | 'drop' | 'slow';
  close(): Promise<void>;
}

const opened: FakeLayer[] = [];

afterEach(async () => {
  await Promise.all(opened.splice(0).map((layer) => layer.close()));
});

async function startFakeLayer(host = '127.0.0.1', port = 0): Promise<FakeLayer> {
  const layer: FakeLayer = {
    url: '',
    calls: [],
    mode: 'ok',
    close: async () => {
      // Replaced once the fake layer is listening.
    },
  };
  const sockets = new Set<Socket>();
  const behave = async (method: string, headers: Headers) => {
    layer.calls.push({ method, headers });
    if (layer.mode === 'slow') await sleep(1_000);
    if (layer.mode === 'drop') {
      // The process dies mid-call: every connection is cut without an answer.
      for (const socket of sockets) socket.destroy();
      await sleep(1_000);
    }
  };
  const store = counterStore({
    async incrementCounter(_req, ctx) {
      await behave('increment', ctx.requestHeader);
      return { count: 1, ttlMs: 1000 };
    },
    async peekCounter(_req, ctx) {
      await behave('peek', ctx.requestHeader);
      return { count: 0, ttlMs: 0 };
    },
  });
  const { server, close } = await serveCounterStore(store, host, port);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  layer.url = `http://${host}:${(server.address() as { port: number }).port}`;
  layer.close = async () => {
    for (const socket of sockets) socket.destroy();
    await close();
  };
  opened.push(layer);
  return layer;
}

/** A URL nothing listens on: connections to it are refused. */
async function deadUrl(): Promise<string> {
  const probe: Server = createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as { port: number }).port;
  probe.close();
  await once(probe, 'close');
  return `http://127.0.0.1:${port}`;
}

describe('layer transport over grpc, a URL whose name stands for several processes', () => {
  it('when the name resolves to several addresses, then calls go round-robin across them; an address added is used once resolved again, and one that fails is passed over', async () => {
    // Found by an attacker (helper 128): a connection by name went through the platform's
    // per-connection balancing once, and every call then went to that one process: behind a
    // Kubernetes Service of two replicas, the second got nothing.
    const a = await startFakeLayer('127.0.0.2');
    const port = Number(new URL(a.url).port);
    const b = await startFakeLayer('127.0.0.3', port);
    let addresses = ['127.0.0.2', '127.0.0.3'];
    const resolved: string[] = [];
    const client = createClient(
      CounterStoreService,
      createLayerTransport({
        target: 'test',
        urls: [`http://layer.test:${port}`],
        protocol: 'grpc',
        timeoutMs: 2_000,
        retries: 2,
        logger,
        backoffMs: 5,
        resolve: async (host) => (resolved.push(host), addresses),
      }),
    );
    // The first calls connect to each address (calls go only to connected ones when there are).
    for (let i = 0; i < 4; i += 1) await client.peekCounter({ key: 'k' });
    const [a0, b0] = [a.calls.length, b.calls.length];
    expect(a0 + b0).toBe(4);
    for (let i = 0; i < 10; i += 1) await client.peekCounter({ key: 'k' });
    expect([a.calls.length - a0, b.calls.length - b0]).toEqual([5, 5]);
    expect(resolved[0]).toBe('layer.test');
    // A process that has gone is passed over: every read is answered by the other (a write in
    // flight on a connection that drops is not repeated, see below, so reads here).
    await a.close();
    const before = b.calls.length;
    for (let i = 0; i < 6; i += 1) await client.peekCounter({ key: 'k' });
    expect(b.calls.length - before).toBe(6);
    expect(a.calls).toHaveLength(a0 + 5);
    // A third process, once the name is resolved again, takes its turn.
    const c = await startFakeLayer('127.0.0.4', port);
    addresses = ['127.0.0.3', '127.0.0.4'];
    await vi.waitFor(
      async () => {
        await client.peekCounter({ key: 'k' });
        expect(c.calls.length).toBeGreaterThan(0);
      },
      { timeout: 15_000, interval: 200 },
    );
  }, 30_000);
});

describe("layer transport over grpc, while a URL's name is resolved the first time", () => {
  const hanging = (timeoutMs: number) =>
    createClient(
      CounterStoreService,
      createLayerTransport({
        target: 'test',
        urls: ['http://layer.test:3002'],
        protocol: 'grpc',
        timeoutMs,
        retries: 0,
        logger,
        // A cluster DNS that does not answer: getaddrinfo waits its timeout × attempts.
        resolve: () => new Promise<string[]>(() => undefined),
      }),
    );
  const outcome = (call: Promise<unknown>) =>
    call.then(
      () => 'answered',
      (error: unknown) => ConnectError.from(error).code,
    );

  it('when the resolver does not answer, then a call still ends within its own time, and one whose caller leaves ends at once', async () => {
    // Found by an attacker (helper 131): calls waited on the first resolution past their deadline,
    // and after their caller had gone.
    let started = Date.now();
    expect(await outcome(hanging(200).peekCounter({ key: 'k' }))).not.toBe('answered');
    expect(Date.now() - started).toBeLessThan(800);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    started = Date.now();
    expect(await outcome(hanging(60_000).peekCounter({ key: 'k' }, { signal: controller.signal }))).not.toBe('answered');
    expect(Date.now() - started).toBeLessThan(800);
  });
});

for (const protocol of ['grpc', 'http'] as const) {
  describe(`layer transport over ${protocol}`, () => {
    const clientOf = (urls: string[], timeoutMs = 2_000) =>
      createClient(CounterStoreService, createLayerTransport({ target: 'test', urls, protocol, timeoutMs, retries: 2, logger, backoffMs: 5 }));

    it('when several processes serve a layer, then calls go round-robin across them', async () => {
      const [a, b] = [await startFakeLayer(), await startFakeLayer()];
      const client = clientOf([a.url, b.url]);
      for (let i = 0; i < 10; i += 1) await client.peekCounter({ key: 'k' });
      expect([a.calls.length, b.calls.length]).toEqual([5, 5]);
    });

    it('when one process refuses connections, then reads and writes go to the other, each write carried out once', async () => {
      const live = await startFakeLayer();
      const client = clientOf([await deadUrl(), live.url]);
      for (let i = 0; i < 4; i += 1) {
        await client.peekCounter({ key: 'k' });
        await client.incrementCounter({ key: 'k', windowMs: 1000 });
      }
      expect(live.calls.filter((call) => call.method === 'increment')).toHaveLength(4);
      expect(live.calls.filter((call) => call.method === 'peek')).toHaveLength(4);
    });

    it('when a process drops the connection mid-call, then a read is retried elsewhere but a write is not repeated', async () => {
      const [dropping, healthy] = [await startFakeLayer(), await startFakeLayer()];
      dropping.mode = 'drop';
      const client = clientOf([dropping.url, healthy.url]);
      await expect(client.peekCounter({ key: 'k' })).resolves.toMatchObject({ count: 0 });
      expect(healthy.calls.map((call) => call.method)).toEqual(['peek']);
      // The retry says it may repeat a call already carried out; the first attempt did not.
      expect(dropping.calls[0]?.headers.get('x-arcana-repeat')).toBeNull();
      expect(healthy.calls[0]?.headers.get('x-arcana-repeat')).toBe('1');

      // Two picks so far (dropping, then healthy for the retry): the next call goes to dropping.
      const before = dropping.calls.length;
      const write = client.incrementCounter({ key: 'k', windowMs: 1000 });
      await expect(write).rejects.toBeInstanceOf(UnavailableError);
      expect(dropping.calls.slice(before).map((call) => call.method)).toEqual(['increment']);
      expect(healthy.calls.filter((call) => call.method === 'increment')).toHaveLength(0);
    });

    it('when every process is down, then the caller gets UnavailableError after the retries', async () => {
      const client = clientOf([await deadUrl(), await deadUrl()]);
      await expect(client.peekCounter({ key: 'k' })).rejects.toBeInstanceOf(UnavailableError);
    });

    it('when calls of a request are retried, then each retry warning names the request', async () => {
      // An outage's hundreds of retry warnings named no request (helper 158).
      const logs = capturingLogger('warn');
      const client = createClient(
        CounterStoreService,
        createLayerTransport({ target: 'test', urls: [await deadUrl(), await deadUrl()], protocol, timeoutMs: 2_000, retries: 2, logger: logs.logger, backoffMs: 5 }),
      );
      await runWithCallContext({ requestId: 'req-retried' }, async () => {
        await expect(client.peekCounter({ key: 'k' })).rejects.toBeInstanceOf(UnavailableError);
      });
      const retries = logs.lines.filter((line) => line.msg === 'internal call failed; retrying');
      expect(retries.map((line) => line.requestId)).toEqual(['req-retried', 'req-retried']);
    });

    it('when the layer answers too late, then the call ends at its deadline with UnavailableError', async () => {
      const slow = await startFakeLayer();
      slow.mode = 'slow';
      const started = Date.now();
      await expect(clientOf([slow.url], 200).peekCounter({ key: 'k' })).rejects.toBeInstanceOf(UnavailableError);
      expect(Date.now() - started).toBeLessThan(900);
    });

    it('when a request is being served, then its id, caller and remaining time go with the call', async () => {
      const layer = await startFakeLayer();
      const client = clientOf([layer.url], 5_000);
      await runWithCallContext({ requestId: 'req-123', caller: 'user:7', deadline: Date.now() + 300 }, () => client.peekCounter({ key: 'k' }));
      const headers = layer.calls[0]?.headers ?? new Headers();
      expect(headers.get('x-request-id')).toBe('req-123');
      expect(headers.get('x-arcana-caller')).toBe('user:7');
      const timeout = timeoutFromHeaders(headers);
      expect(timeout).toBeGreaterThan(0);
      expect(timeout).toBeLessThanOrEqual(300);
      // A first attempt of a first attempt is no repeat.
      expect(headers.get('x-arcana-repeat')).toBeNull();
    });

    it('when the request being served may be a repeat, then so may every call it makes, and the call says so', async () => {
      const layer = await startFakeLayer();
      const client = clientOf([layer.url], 5_000);
      await runWithCallContext({ requestId: 'req-repeat', repeat: true }, () => client.incrementCounter({ key: 'k', windowMs: 1000 }));
      expect(layer.calls.map((call) => [call.method, call.headers.get('x-arcana-repeat')])).toEqual([['increment', '1']]);
    });
  });
}
