// The addresses behind an internal gRPC URL's name (src/communication/resolved-endpoints.ts, its
// use in layer-transport.ts), when one of them cannot be reached: at once (no route: a Docker
// container without IPv6 whose /etc/hosts still says `::1 localhost`, SERVICE_URLS=
// http://localhost:3001), or only after a long wait (a pod gone with its node). Found by an
// attacking helper (130): a write sent to an address never reached was not retried elsewhere,
// and calls put on a connection that was never made waited out their deadlines.
import { createClient } from '@connectrpc/connect';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { createLayerTransport } from '../../src/communication/layer-transport.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { countingStore, serveCounterStore } from '../helpers/counter-layer.ts';

const logger = createLogger({ level: 'silent' });
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close()));
});

/** A counter-store process on `host`, counting the increments it carried out. */
async function startLayer(host: string, port = 0): Promise<{ port: number; increments: () => number }> {
  const { store, increments } = countingStore();
  const served = await serveCounterStore(store, host, port);
  const sockets = new Set<Socket>();
  served.server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  closers.push(async () => {
    for (const socket of sockets) socket.destroy();
    await served.close();
  });
  return { port: served.port, increments };
}

describe('a layer URL whose name resolves to an address this host cannot reach as well', () => {
  const transportFor = (port: number, addresses: string[], timeoutMs: number) =>
    createClient(
      CounterStoreService,
      createLayerTransport({
        target: 'test',
        urls: [`http://layer.test:${port}`],
        protocol: 'grpc',
        timeoutMs,
        retries: 2,
        logger,
        backoffMs: 5,
        resolve: async () => addresses,
      }),
    );
  const outcome = (call: Promise<unknown>) =>
    call.then(
      () => 'ok',
      (error: unknown) => `${(error as Error).constructor.name}: ${(error as Error).message}`,
    );

  it('when the connection to one address fails at once (no route), then a write goes to the other address instead of failing', async () => {
    // `localhost` in a container without IPv6: /etc/hosts lists ::1 (EADDRNOTAVAIL there) and
    // 127.0.0.1; or a name with an AAAA record on a host with no IPv6 route (ENETUNREACH).
    // Connecting by name, as before this change, Node's happy eyeballs found the address that
    // works; per address, a write sent to the unreachable one was never sent, yet it is not retried.
    // (255.255.255.255 gives ENETUNREACH at once here.)
    const layer = await startLayer('127.0.0.2');
    const client = transportFor(layer.port, ['255.255.255.255', '127.0.0.2'], 2_000);
    const outcomes: string[] = [];
    for (let i = 0; i < 4; i += 1) outcomes.push(await outcome(client.incrementCounter({ key: 'k', windowMs: 60_000 })));
    expect(outcomes).toEqual(['ok', 'ok', 'ok', 'ok']);
    expect(layer.increments()).toBe(4);
  }, 10_000);

  it('when one of two replicas has died and its address still resolves, then calls are answered by the live one', async () => {
    // A pod gone with its node: its address stays in DNS until the next resolution, and a
    // connection to it fails only when neighbour discovery gives up (EHOSTUNREACH after ~3 s, as
    // 2001:db8::1 does here). Calls are put on that connecting session although a live one is
    // open, and a call that runs out of time there neither fails over nor marks the address down.
    const layer = await startLayer('127.0.0.2');
    const client = transportFor(layer.port, ['127.0.0.2', '2001:db8::1'], 2_000);
    await client.peekCounter({ key: 'warm' });
    const started = performance.now();
    const outcomes = await Promise.all(Array.from({ length: 6 }, (_, i) => outcome(client.peekCounter({ key: `k${i}` }))));
    expect(outcomes).toEqual(Array(6).fill('ok'));
    expect(performance.now() - started).toBeLessThan(1_500);
  }, 15_000);
});
