import { createRequire } from 'node:module';
import type * as IoRedis from 'ioredis';
import type { Redis } from 'ioredis';
import type { Logger } from '../logger.ts';

export type { Redis };

/** How long a command may go unanswered before Redis is taken to have stopped (see FailFastRedis). */
const COMMAND_TIMEOUT_MS = 1_000;

/**
 * A Redis connection for request-path work (cache, counters). Commands fail fast while Redis is
 * unreachable instead of queueing, so callers can fall back at once; the client keeps
 * reconnecting in the background and `onReconnect` runs each time it is back after its
 * connection closed, whether or not that raised an error: Redis closing it cleanly (CLIENT KILL,
 * its idle `timeout`) raises none, and commands sent meanwhile failed all the same.
 */
export function createRedisClient(options: { url: string; logger: Logger; name: string; onReconnect?: () => void }): Redis {
  // Loaded by the first client, so that a process without REDIS_URL never loads it. ioredis is
  // CommonJS: `require` gives the very module an import would.
  const { Redis } = createRequire(import.meta.url)('ioredis') as typeof IoRedis;
  /**
   * A command unanswered for COMMAND_TIMEOUT_MS means Redis stopped answering with its connection
   * open (a frozen process or host), which raises no error: every later command waited its own
   * full timeout in turn, a second each, several per request. The connection is dropped at the
   * first such command instead, with one warning; until Redis answers the reconnect's ready
   * check, commands fail at once and callers fall back (the database, or a 503 for login), and
   * `onReconnect` runs when it is back.
   *
   * The verdict waits for the event loop to read its sockets once more (setImmediate runs after
   * the poll phase; timers run before it): a process busier than the timeout (helper 77's service
   * under a flood of lists) had the answer in its socket all along, and ioredis's own
   * `commandTimeout` dropped a healthy connection for it and sent its reads to the database.
   */
  class FailFastRedis extends Redis {
    /** Set when the connection is given up, until it is ready again: one verdict per outage. */
    givenUp = false;

    override sendCommand(...[command, stream]: Parameters<IoRedis.Redis['sendCommand']>): unknown {
      const sent = super.sendCommand(command, stream);
      if (this.status !== 'ready') return sent;
      let answered = false;
      const timer = setTimeout(
        () =>
          setImmediate(() => {
            if (answered || this.givenUp || this.status !== 'ready') return;
            this.givenUp = true;
            options.logger.warn({ redis: options.name }, 'redis stopped answering; reconnecting, falling back meanwhile');
            // Destroyed, not ended: a frozen peer never closes its side, and the commands waiting
            // on the connection fail only when it is closed (ioredis then reconnects).
            this.stream.destroy();
          }),
        COMMAND_TIMEOUT_MS,
      );
      const settle = () => {
        answered = true;
        clearTimeout(timer);
      };
      command.promise.then(settle, settle);
      return sent;
    }
  }
  const redis = new FailFastRedis(options.url, {
    connectionName: options.name,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 2_000,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
    lazyConnect: false,
    // Commands issued in one turn of the event loop leave in one write. Every authenticated
    // request reads its session and its user; written one command per syscall, those writes
    // were a quarter of the CPU of a warm REST read under load.
    enableAutoPipelining: true,
  });
  dropUnlessReady(redis, () => options.logger.warn({ redis: options.name }, 'redis connection did not get ready; reconnecting'));
  let down = false;
  let closed = false;
  redis.on('error', (error: Error) => {
    // ioredis reports every failed reconnect; one warning per outage is enough.
    if (!down) options.logger.warn({ err: error.message, redis: options.name }, 'redis unavailable; falling back');
    down = true;
  });
  redis.on('close', () => {
    closed = true;
  });
  redis.on('ready', () => {
    redis.givenUp = false;
    if (down) {
      options.logger.info({ redis: options.name }, 'redis is back');
      down = false;
    }
    if (closed) {
      closed = false;
      options.onReconnect?.();
    }
  });
  return redis;
}

/** How long a new connection may take from its TCP connect to ready (its ready check's INFO). */
const READY_TIMEOUT_MS = 2_000;

/**
 * Closes a connection that connected but did not get ready within READY_TIMEOUT_MS, so that the
 * client connects again. ioredis's connectTimeout ends at the TCP connect, and its ready check (an
 * INFO, and the setup commands before it) has no timeout: a connection made while Redis stalled,
 * and never answered after (a failover, a lost NAT entry), kept the client waiting on it for as
 * long as the kernel kept the socket, about fifteen minutes, while new connections worked; every
 * login was refused meanwhile (found by an attacking helper).
 */
export function dropUnlessReady(redis: Redis, onDrop: () => void): void {
  let timer: NodeJS.Timeout | undefined;
  // One warning until the connection is ready again, not one per attempt (helper 103 counted 28
  // in a 30 s outage).
  let warned = false;
  const disarm = () => {
    clearTimeout(timer);
    timer = undefined;
  };
  redis.on('connect', () => {
    disarm();
    const stream = redis.stream;
    timer = setTimeout(() => {
      timer = undefined;
      if (redis.status === 'ready' || redis.stream !== stream) return;
      if (!warned) onDrop();
      warned = true;
      // Destroyed, not ended: a peer that does not answer does not close its side either.
      stream.destroy();
    }, READY_TIMEOUT_MS);
    timer.unref();
  });
  redis.on('ready', () => {
    disarm();
    warned = false;
  });
  redis.on('close', disarm);
}

/**
 * Runs `each` on every batch of keys under `prefix` (SCAN, not KEYS, so Redis is never blocked).
 * The prefix is matched as the text it is: a REDIS_KEY_PREFIX with a glob character in it (`*`,
 * `?`, `[`) matched none of its own keys, or another deployment's on the same Redis (helper 113).
 */
export async function forEachKeyBatch(redis: Redis, prefix: string, each: (keys: string[]) => Promise<unknown>): Promise<void> {
  const pattern = `${prefix.replace(/[*?[\]\\]/g, (char) => `\\${char}`)}*`;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
    cursor = next;
    if (keys.length > 0) await each(keys);
  } while (cursor !== '0');
}

/** Deletes every key under `prefix`; returns how many. */
export async function deleteByPrefix(redis: Redis, prefix: string): Promise<number> {
  let deleted = 0;
  await forEachKeyBatch(redis, prefix, async (keys) => (deleted += await redis.del(...keys)));
  return deleted;
}

/**
 * Waits until the client is connected, or `timeoutMs` passes; start-up goes on either way, since
 * every Redis-backed part falls back while Redis is away.
 */
export async function waitUntilReady(redis: Redis, timeoutMs: number): Promise<boolean> {
  if (redis.status === 'ready') return true;
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => {
      redis.off('ready', onReady);
      resolve(false);
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve(true);
    };
    redis.once('ready', onReady);
  });
}
