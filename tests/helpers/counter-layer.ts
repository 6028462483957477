// A layer below served for the internal transport's tests: the repository's CounterStoreService
// (the smallest internal service with both a read and a write), on the application's own RPC
// handler and dual-protocol server, as a layer process serves it.
import type { ConnectRouter, ServiceImpl } from '@connectrpc/connect';
import { once } from 'node:events';
import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { createRpcNodeHandler } from '../../src/controllers/rpc/rpc-node-handler.ts';
import { createDualProtocolServer } from '../../src/server.ts';

export type CounterStore = ServiceImpl<typeof CounterStoreService>;

/** A counter store that answers every method at once; `overrides` replace some. */
export function counterStore(overrides: Partial<CounterStore> = {}): CounterStore {
  return {
    async incrementCounter() {
      return { count: 1, ttlMs: 1000 };
    },
    async peekCounter() {
      return { count: 0, ttlMs: 0 };
    },
    async reserveCounter() {
      return { reserved: true, count: 1, ttlMs: 1000 };
    },
    async releaseCounter() {
      return {};
    },
    async deleteCounter() {
      return {};
    },
    async deleteCountersByPrefix() {
      return { deleted: 0 };
    },
    ...overrides,
  };
}

/** Serves `store` on host:port (0: any free port) until `close`. */
export async function serveCounterStore(store: CounterStore, host: string, port = 0) {
  const handler = createRpcNodeHandler({ routes: (router: ConnectRouter) => router.service(CounterStoreService, store) });
  const served = createDualProtocolServer({ http1: handler, http2: handler });
  served.server.listen(port, host);
  await once(served.server, 'listening');
  return { ...served, port: (served.server.address() as { port: number }).port };
}

/** A counter store that counts the increments it carried out, as a replica's writes. */
export function countingStore(): { store: CounterStore; increments: () => number } {
  let increments = 0;
  const store = counterStore({
    async incrementCounter() {
      increments += 1;
      return { count: increments, ttlMs: 1000 };
    },
    async peekCounter() {
      return { count: increments, ttlMs: 0 };
    },
  });
  return { store, increments: () => increments };
}
