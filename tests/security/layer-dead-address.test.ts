// An address behind a layer URL's name whose process is gone (a replica crashed whose address still
// resolves) must not get a new connection attempt at every internal call. Found by an attacking
// helper (132): background connections to idle addresses that failed never marked the address
// down, so every call opened another until the name was resolved again.
import { createClient } from '@connectrpc/connect';
import type * as NodeNet from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';

const attempts = vi.hoisted(() => [] as string[]);
vi.mock('node:net', async (importOriginal) => {
  const net = await importOriginal<typeof NodeNet>();
  return {
    ...net,
    connect: (...args: Parameters<typeof net.connect>) => {
      const options = args[0] as { host?: string };
      attempts.push(String(options.host));
      return net.connect(...args);
    },
  };
});

import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { createLayerTransport } from '../../src/communication/layer-transport.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { counterStore, serveCounterStore } from '../helpers/counter-layer.ts';

const logger = createLogger({ level: 'silent' });
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close()));
});

async function startLayer(host: string): Promise<number> {
  const { port, close, closeNow } = await serveCounterStore(counterStore(), host);
  closers.push(async () => {
    closeNow();
    await close();
  });
  return port;
}

describe('an address behind a layer URL whose process is gone', () => {
  it('when one of two addresses refuses connections, then it is not connected to again on every call (a backoff, or passed over as down)', async () => {
    const port = await startLayer('127.0.0.5');
    // 127.0.0.6: nothing listens on the port (the replica's process has died; its address still resolves).
    const counter = createClient(
      CounterStoreService,
      createLayerTransport({
        target: 'test',
        urls: [`http://layer.test:${port}`],
        protocol: 'grpc',
        timeoutMs: 2_000,
        retries: 2,
        logger,
        backoffMs: 5,
        resolve: async () => ['127.0.0.5', '127.0.0.6'],
      }),
    );
    await counter.peekCounter({ key: 'warm' });
    attempts.length = 0;
    const started = performance.now();
    for (let i = 0; i < 300; i += 1) await counter.peekCounter({ key: `k${i}` });
    const elapsedMs = performance.now() - started;
    const toDead = attempts.filter((host) => host === '127.0.0.6').length;
    // gRPC's subchannels back off 1 s, then longer, between attempts; the address was marked
    // down for RESOLVE_INTERVAL_MS when a call failed on it. Over these ~1–2 s, a handful at most.
    expect({ connectionAttemptsToDeadAddress: toDead, elapsedMs: Math.round(elapsedMs) }).toEqual({
      connectionAttemptsToDeadAddress: expect.toSatisfy((n: number) => n <= 5),
      elapsedMs: expect.any(Number),
    });
  }, 20_000);
});
