// A write in flight on a connected session to a layer process that shuts down (SIGTERM: listener
// closed, GOAWAY, streams still open cut near the end of the grace period, as src/start.ts does)
// must not be sent again. Found by an attacking helper (132): the client kept one error for all
// its sessions, and the refused connection of the next one (opened by a later call, or in the
// background) became the cause of the old session's cut stream; read as "nothing was sent", the
// write was repeated by the other replica, or by the restarted process.
import { createClient } from '@connectrpc/connect';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { createLayerTransport } from '../../src/communication/layer-transport.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { counterStore, serveCounterStore } from '../helpers/counter-layer.ts';

const logger = createLogger({ level: 'silent' });
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

interface Layer {
  port: number;
  increments: () => number;
  /** The increment handler waits for this before answering (a slow write). */
  hold: (held: boolean) => void;
  /** What start.ts does on SIGTERM: a graceful close (listener closed, GOAWAY)… */
  shutdown: () => Promise<void>;
  /** …and, near the end of the grace period, the connections still open are cut. */
  cut: () => number;
}

async function startLayer(host: string, port = 0): Promise<Layer> {
  let increments = 0;
  let held = false;
  const store = counterStore({
    async incrementCounter() {
      increments += 1;
      // The write is done; its answer is slow to come (the transaction's commit, an audit row…).
      while (held) await sleep(20);
      return { count: increments, ttlMs: 1000 };
    },
    async peekCounter() {
      return { count: increments, ttlMs: 0 };
    },
  });
  const { close, closeNow, port: bound } = await serveCounterStore(store, host, port);
  let closing: Promise<void> | undefined;
  closers.push(async () => {
    held = false;
    closeNow();
    await (closing ?? close());
  });
  return {
    port: bound,
    increments: () => increments,
    hold: (value) => (held = value),
    shutdown: () => (closing ??= close()),
    cut: () => closeNow(),
  };
}

const outcome = (call: Promise<unknown>) =>
  call.then(
    () => 'ok',
    (error: unknown) => (error as Error).constructor.name,
  );

describe('a write in flight when its layer process shuts down', () => {
  it('when the name has two replicas and the one carrying out an IncrementCounter shuts down, then the write is not carried out a second time by the other', async () => {
    const a = await startLayer('127.0.0.2');
    const b = await startLayer('127.0.0.3', a.port);
    const counter = createClient(
      CounterStoreService,
      createLayerTransport({
        target: 'test',
        urls: [`http://layer.test:${a.port}`],
        protocol: 'grpc',
        timeoutMs: 5_000,
        retries: 2,
        logger,
        backoffMs: 5,
        resolve: async () => ['127.0.0.2', '127.0.0.3'],
      }),
    );
    // Both connections made.
    for (let i = 0; i < 4; i += 1) await counter.peekCounter({ key: 'warm' });
    a.hold(true);
    b.hold(true);
    // Two writes: round-robin puts one on each replica; both are carried out and wait.
    const writes = [outcome(counter.incrementCounter({ key: 'k', windowMs: 60_000 })), outcome(counter.incrementCounter({ key: 'k', windowMs: 60_000 }))];
    await sleep(100);
    expect(a.increments() + b.increments()).toBe(2);
    b.hold(false);
    // Replica A gets SIGTERM: listener closed, GOAWAY to its sessions.
    void a.shutdown();
    await sleep(100);
    // Other calls go on meanwhile (served by B); picking connects A's idle client in the background: refused.
    for (let i = 0; i < 3; i += 1) await counter.peekCounter({ key: 'other' });
    await sleep(100);
    // Near the end of the grace period A cuts what is still open: the write it carried out loses its answer.
    a.cut();
    const outcomes = await Promise.all(writes);
    // Two IncrementCounter calls were made: two increments, whatever the callers were told
    // (the one cut may fail `unavailable`; it must not be carried out again elsewhere).
    expect({ outcomes: outcomes.sort(), increments: a.increments() + b.increments() }).toEqual({ outcomes: expect.any(Array), increments: 2 });
  }, 15_000);

  it('when the layer URL is one address and its process restarts, then a write cut by the shutdown is not carried out again by the new process', async () => {
    const a = await startLayer('127.0.0.4');
    const counter = createClient(
      CounterStoreService,
      createLayerTransport({
        target: 'test',
        urls: [`http://127.0.0.4:${a.port}`],
        protocol: 'grpc',
        timeoutMs: 5_000,
        retries: 3,
        logger,
        backoffMs: 200,
        maxBackoffMs: 200,
        random: () => 1,
      }),
    );
    await counter.peekCounter({ key: 'warm' });
    a.hold(true);
    const write = outcome(counter.incrementCounter({ key: 'k', windowMs: 60_000 }));
    await sleep(100);
    expect(a.increments()).toBe(1);
    void a.shutdown();
    await sleep(100);
    // Another request's call during the shutdown: its connection is refused (it fails over or fails; no matter).
    await outcome(counter.peekCounter({ key: 'other' }));
    a.cut();
    // The supervisor restarts the process on the same address and port.
    await sleep(50);
    const restarted = await startLayer('127.0.0.4', a.port);
    const result = await write;
    expect({ result, incrementsAfterRestart: restarted.increments() }).toEqual({ result: expect.any(String), incrementsAfterRestart: 0 });
  }, 15_000);
});
