// Replicas behind a layer URL's name that take a connection or a call and do not serve it. Found by
// an attacking helper (135):
// - A process that accepts TCP but never speaks HTTP/2 (a wedged replica: its event loop blocked
//   while the kernel completes the handshake; a port that is no gRPC server) was taken for a
//   connected one, since Node's 'connect' is only TCP's: calls were put on it and each waited out
//   its whole deadline (INTERNAL_TIMEOUT_MS, 30 s by default), and a timeout not being a failure
//   to connect, its address was never passed over. gRPC counts an address ready once the
//   server's SETTINGS have come, within its connect deadline.
// - A call the process refused unprocessed (RST_STREAM REFUSED_STREAM, as the server does past
//   HTTP2_STREAMS_PER_ADDRESS_MAX, or above the last stream of a closing process's GOAWAY) "can
//   be safely retried" (RFC 9113 §8.7), and gRPC retries it transparently; a write so refused
//   failed `unavailable` (503) though another replica was there, and the refusing one, healthy,
//   was passed over for ten seconds.
import { createClient, type ConnectRouter } from '@connectrpc/connect';
import { once } from 'node:events';
import { constants, createServer as createHttp2Server, type ServerHttp2Session } from 'node:http2';
import { createServer, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { createLayerTransport } from '../../src/communication/layer-transport.ts';
import { createRpcNodeHandler } from '../../src/controllers/rpc/rpc-node-handler.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { downstreamReady } from '../../src/rpc/readiness.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { countingStore, serveCounterStore } from '../helpers/counter-layer.ts';

const logger = createLogger({ level: 'silent' });
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

/** A working replica on host (any port), counting the writes it carried out. */
async function startLayer(host: string): Promise<{ port: number; increments: () => number }> {
  const { store, increments } = countingStore();
  const { port, close, closeNow } = await serveCounterStore(store, host);
  closers.push(async () => {
    closeNow();
    await close();
  });
  return { port, increments };
}

/** Accepts connections on host:port and never sends a byte. */
async function startSilent(host: string, port: number): Promise<void> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    socket.resume();
  });
  server.listen(port, host);
  await once(server, 'listening');
  closers.push(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
}

/**
 * An HTTP/2 process on host:port that answers reads (so it is connected and in the rotation) and
 * refuses every write unprocessed, as `how` says; counts the writes it refused.
 */
async function startRefusing(host: string, port: number, how: 'rst' | 'goaway'): Promise<{ refused: () => number; reads: () => number }> {
  let refused = 0;
  let reads = 0;
  const sessions = new Set<ServerHttp2Session>();
  const server = createHttp2Server();
  server.on('session', (session) => {
    sessions.add(session);
    session.on('error', () => undefined);
    session.on('close', () => sessions.delete(session));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => undefined);
    if (String(headers[':path']).endsWith('/PeekCounter')) {
      reads += 1;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.alloc(5));
      stream.resume();
      return;
    }
    refused += 1;
    // A closing process's GOAWAY names the last stream it took, below this one. Node's goaway()
    // reads 0 as "the last stream received", so a session's first stream is refused by RST.
    const id = stream.id ?? 1;
    if (how === 'rst' || id < 3) stream.close(constants.NGHTTP2_REFUSED_STREAM);
    else stream.session?.goaway(constants.NGHTTP2_NO_ERROR, id - 2);
  });
  server.listen(port, host);
  await once(server, 'listening');
  closers.push(async () => {
    for (const session of sessions) session.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { refused: () => refused, reads: () => reads };
}

/** A counter client over gRPC to `layer.test`, which resolves to `addresses`. */
function counterAt(port: number, addresses: string[]) {
  const transport = createLayerTransport({
    target: 'test',
    urls: [`http://layer.test:${port}`],
    protocol: 'grpc',
    timeoutMs: 3_000,
    retries: 2,
    logger,
    backoffMs: 5,
    resolve: async () => addresses,
  });
  return createClient(CounterStoreService, transport);
}

/** `ok` or the error, with how long it took when that was more than a second. */
async function outcome(call: Promise<unknown>): Promise<string> {
  const started = performance.now();
  const result = await call.then(
    () => 'ok',
    (error: unknown) => `${(error as Error).constructor.name}: ${(error as Error).message}`,
  );
  const ms = performance.now() - started;
  return ms > 1_000 ? `${result} (after ${Math.round(ms)} ms)` : result;
}

describe('a replica that accepts TCP but never speaks HTTP/2', () => {
  it('when one of two addresses is silent, then reads and writes are all carried out by the other, none waiting out its deadline', async () => {
    const live = await startLayer('127.0.135.2');
    await startSilent('127.0.135.3', live.port);
    const counter = counterAt(live.port, ['127.0.135.2', '127.0.135.3']);
    // The first calls find the connections being made (the silent one's is given up after 2 s).
    await Promise.all([outcome(counter.peekCounter({ key: 'warm' })), outcome(counter.peekCounter({ key: 'warm' }))]);
    const reads = [];
    for (let index = 0; index < 6; index += 1) reads.push(await outcome(counter.peekCounter({ key: `read${index}` })));
    const writes = [];
    for (let index = 0; index < 4; index += 1) writes.push(await outcome(counter.incrementCounter({ key: 'k', windowMs: 60_000 })));
    expect({ reads, writes, increments: live.increments() }).toEqual({ reads: Array(6).fill('ok'), writes: Array(4).fill('ok'), increments: 4 });
  }, 30_000);

  it('when the only address is silent, then a write fails unavailable within the connect bound, not at its deadline, and the connection is closed', async () => {
    // It reads what it is sent (a process whose kernel takes the bytes), so a close is seen.
    const silent = createServer((socket) => socket.on('error', () => undefined).resume());
    silent.listen(0, '127.0.135.4');
    await once(silent, 'listening');
    closers.push(() => new Promise<void>((resolve) => silent.close(() => resolve())));
    const { port } = silent.address() as { port: number };
    const transport = createLayerTransport({ target: 'test', urls: [`http://127.0.135.4:${port}`], protocol: 'grpc', timeoutMs: 10_000, retries: 0, logger, backoffMs: 5 });
    const counter = createClient(CounterStoreService, transport);
    const answer = await outcome(counter.incrementCounter({ key: 'k', windowMs: 60_000 }));
    // And the connection given up is closed, not left open at each attempt.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const open = await new Promise<number>((resolve, reject) => silent.getConnections((error, count) => (error === null ? resolve(count) : reject(error))));
    expect({ answer, open }).toEqual({ answer: expect.stringMatching(/^UnavailableError: .*\(after (1|2)\d{3} ms\)$/), open: 0 });
  }, 30_000);
});

describe('a call a replica refuses unprocessed', () => {
  for (const how of ['rst', 'goaway'] as const) {
    it(`when one of two replicas refuses writes (${how === 'rst' ? 'RST_STREAM REFUSED_STREAM' : 'GOAWAY below the stream'}), then each write is carried out once, by the other, and the refusing replica still serves reads`, async () => {
      const [liveHost, refusingHost] = how === 'rst' ? ['127.0.135.6', '127.0.135.7'] : ['127.0.135.8', '127.0.135.9'];
      const live = await startLayer(liveHost);
      const refusing = await startRefusing(refusingHost, live.port, how);
      const counter = counterAt(live.port, [refusingHost, liveHost]);
      for (let index = 0; index < 4; index += 1) await outcome(counter.peekCounter({ key: 'warm' }));
      const writes = [];
      for (let index = 0; index < 4; index += 1) writes.push(await outcome(counter.incrementCounter({ key: 'k', windowMs: 60_000 })));
      const readsBefore = refusing.reads();
      for (let index = 0; index < 4; index += 1) await outcome(counter.peekCounter({ key: 'after' }));
      const { refused, reads } = { refused: refusing.refused(), reads: refusing.reads() - readsBefore };
      expect({ writes, increments: live.increments(), refused: refused > 0, readsServed: reads > 0 }).toEqual({
        writes: Array(4).fill('ok'),
        increments: 4,
        refused: true,
        readsServed: true,
      });
    }, 30_000);
  }
});

describe('the readiness of a layer behind replicas', () => {
  it('when one of two replicas is not serving, then the layer above is ready on every check, and not once none is', async () => {
    const statuses = new Map<string, ServingStatus>([
      ['127.0.142.1', ServingStatus.SERVING],
      ['127.0.142.2', ServingStatus.NOT_SERVING],
    ]);
    let port = 0;
    for (const host of statuses.keys()) {
      const handler = createRpcNodeHandler({ routes: (router: ConnectRouter) => router.service(Health, { check: async () => ({ status: statuses.get(host) }) }) });
      const { server, close, closeNow } = createDualProtocolServer({ http1: handler, http2: handler });
      server.listen(port, host);
      await once(server, 'listening');
      port = (server.address() as { port: number }).port;
      closers.push(async () => {
        closeNow();
        await close();
      });
    }
    const transport = createLayerTransport({
      target: 'test',
      urls: [`http://layer.test:${port}`],
      protocol: 'grpc',
      timeoutMs: 3_000,
      retries: 0,
      logger,
      backoffMs: 5,
      resolve: async () => [...statuses.keys()],
    });
    const ready = downstreamReady(transport);
    const outcome = () =>
      ready().then(
        () => 'ready',
        () => 'not ready',
      );
    await outcome();
    const checks = [];
    for (let index = 0; index < 6; index += 1) checks.push(await outcome());
    statuses.set('127.0.142.1', ServingStatus.NOT_SERVING);
    expect({ checks, none: await outcome() }).toEqual({ checks: Array(6).fill('ready'), none: 'not ready' });
  }, 30_000);
});
