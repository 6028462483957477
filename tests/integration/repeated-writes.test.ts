// A write between layers whose answer is lost after it committed: the repository process cuts
// every connection right after the write, as a crash or a network fault would, and the service
// layer's transport tries again (UpdateUser and the revocations are marked idempotent). The retry
// carries x-arcana-repeat, and the repository answers it as the first attempt would have:
// - a conditional update finds its own result in place and returns the row, instead of a 412 or
//   409 for a change that did succeed (RFC 9110 13.1.1 allows exactly this);
// - a revocation returns the pairs its first attempt revoked, so the session cache still forgets
//   them and a revoked token stops working at once.
// A call without the header is judged as before, and so is a repeat that finds anything else.
// Real PostgreSQL (and MariaDB in that project), real servers on loopback, both protocols.
import { createClient, type ConnectRouter } from '@connectrpc/connect';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OAuthToken, User } from '../../gen/prisma/client.ts';
import { TokenRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import { UserRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { layerServerErrorInterceptor } from '../../src/communication/layer-errors.ts';
import { layerContextInterceptor } from '../../src/communication/layer-server.ts';
import { createLayerTransport } from '../../src/communication/layer-transport.ts';
import { RemoteTokenRepository, RemoteUserRepository } from '../../src/communication/repository/remote-repositories.ts';
import { createTokenRepositoryHandler, createUserRepositoryHandler } from '../../src/communication/repository/repository-handlers.ts';
import { createRpcNodeHandler } from '../../src/controllers/rpc/rpc-node-handler.ts';
import { PreconditionFailedError } from '../../src/domain/errors.ts';
import { MemoryCache } from '../../src/infrastructure/cache.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { CachedTokenRepository } from '../../src/repositories/cached-token-repository.ts';
import type { PrismaTokenRepository, RevocationReason } from '../../src/repositories/token-repository.ts';
import type { PrismaUserRepository, UserChanges, UserExpectation, WriteOptions } from '../../src/repositories/user-repository.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { createTestApp, prismaRepositoriesOf, type TestApp } from '../helpers/test-app.ts';
import { intercept } from '../helpers/intercept.ts';
import { newTokenRecord, storePair, TEST_PASSWORD_HASH } from '../helpers/token-records.ts';

const logger = createLogger({ level: 'silent' });

let t: TestApp;
let users: PrismaUserRepository;
let tokens: PrismaTokenRepository;
/** The repository process: its next write, when armed, commits and then loses its answer. */
let layer: { url: string; loseNextAnswer: () => void; repeats: boolean[]; close: () => Promise<void> };

beforeAll(async () => {
  t = await createTestApp();
  ({ users, tokens } = prismaRepositoriesOf(t));
  layer = await startRepositoryLayer();
});

afterAll(async () => {
  await (layer as typeof layer | undefined)?.close();
  await (t as TestApp | undefined)?.close();
});

async function startRepositoryLayer(): Promise<typeof layer> {
  const sockets = new Set<Socket>();
  let armed = false;
  const repeats: boolean[] = [];
  /** Runs the write for real, then, once armed, cuts every connection before answering. */
  const write = async <T>(options: WriteOptions | undefined, run: () => Promise<T>): Promise<T> => {
    repeats.push(options?.repeat === true);
    const result = await run();
    if (armed) {
      armed = false;
      for (const socket of sockets) socket.destroy();
      await sleep(1_000);
    }
    return result;
  };
  const cuttingUsers = intercept(users, {
    update: (id: number, changes: UserChanges, expected?: UserExpectation, options?: WriteOptions) => write(options, () => users.update(id, changes, expected, options)),
  });
  const cuttingTokens = intercept(tokens, {
    revoke: (id: number, reason: RevocationReason, options?: WriteOptions) => write(options, () => tokens.revoke(id, reason, options)),
    revokeAllForUser: (userId: number, exceptId: number | undefined, reason: RevocationReason, options?: WriteOptions) =>
      write(options, () => tokens.revokeAllForUser(userId, exceptId, reason, options)),
  });

  const handler = createRpcNodeHandler({
    routes: (router: ConnectRouter) => {
      router.service(UserRepositoryService, createUserRepositoryHandler(cuttingUsers));
      router.service(TokenRepositoryService, createTokenRepositoryHandler(cuttingTokens));
    },
    interceptors: [layerContextInterceptor(logger), layerServerErrorInterceptor(logger)],
  });
  const { server, close } = createDualProtocolServer({ http1: handler, http2: handler });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    loseNextAnswer: () => (armed = true),
    repeats,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await close();
    },
  };
}

let serial = 0;

async function newUser(): Promise<User> {
  serial += 1;
  const name = `repeat_${process.pid}_${serial}`;
  return users.create({ username: name, email: `${name}@example.com`, passwordHash: TEST_PASSWORD_HASH });
}

const newToken = newTokenRecord;

for (const protocol of ['grpc', 'http'] as const) {
  describe(`a write whose answer is lost, over ${protocol}`, () => {
    const transport = () => createLayerTransport({ target: 'repository', urls: [layer.url], protocol, timeoutMs: 5_000, retries: 2, logger, backoffMs: 5 });
    let remoteUsers: RemoteUserRepository;
    let remoteTokens: RemoteTokenRepository;

    beforeAll(() => {
      remoteUsers = new RemoteUserRepository(createClient(UserRepositoryService, transport()));
      remoteTokens = new RemoteTokenRepository(createClient(TokenRepositoryService, transport()));
    });

    it('when a versioned update committed and its answer was lost, then the retry answers with the row as written, one version on', async () => {
      const user = await newUser();
      layer.loseNextAnswer();
      const before = layer.repeats.length;
      const updated = await remoteUsers.update(user.id, { firstName: 'Once' }, { version: user.version });
      // Two attempts reached the repository: the first as a first attempt, the second as a repeat.
      expect(layer.repeats.slice(before)).toEqual([false, true]);
      expect(updated).toMatchObject({ id: user.id, firstName: 'Once', version: user.version + 1 });
      expect(await users.findById(user.id)).toStrictEqual(updated);
    });

    it('when a state transition committed and its answer was lost, then the retry succeeds instead of reporting a conflict', async () => {
      const user = await newUser();
      layer.loseNextAnswer();
      const verified = await remoteUsers.update(user.id, { isVerified: true }, { isVerified: false });
      expect(verified).toMatchObject({ isVerified: true, version: user.version + 1 });
      // Verifying again is still a conflict: only a repeat is judged by its result.
      await expect(remoteUsers.update(user.id, { isVerified: true }, { isVerified: false })).rejects.toMatchObject({ code: 'CONFLICT' });
    });

    it('when revoke-all committed and its answer was lost, then the retry still names the revoked pairs and the cache forgets them', async () => {
      const user = await newUser();
      const pairs = await Promise.all([storePair(tokens, newToken(user.id)), storePair(tokens, newToken(user.id)), storePair(tokens, newToken(user.id))]);
      const cache = new MemoryCache();
      const cached = new CachedTokenRepository(remoteTokens, cache, 300);
      // Each session is looked up once, and so cached as live.
      for (const pair of pairs) expect((await cached.findByAccessHash(pair.accessTokenHash))?.isRevoked).toBe(false);

      layer.loseNextAnswer();
      const revoked = await cached.revokeAllForUser(user.id, undefined, 'revoked');
      expect(revoked.sort()).toEqual(pairs.map((pair) => pair.accessTokenHash).sort());
      // No cached copy outlives the revocation: every lookup now finds the pair revoked.
      for (const pair of pairs) expect((await cached.findByAccessHash(pair.accessTokenHash))?.isRevoked).toBe(true);
    });
  });
}

describe('repeats judged by the repository', () => {
  it('when a repeat finds other changes, another version or a later write, then it is refused as a first attempt would be', async () => {
    const user = await newUser();
    const first = await users.update(user.id, { firstName: 'Mine', lastName: 'Too' }, { version: user.version });
    const repeat = { repeat: true };
    // The same write again, as a repeat: its result is in place.
    expect(await users.update(user.id, { firstName: 'Mine', lastName: 'Too' }, { version: user.version }, repeat)).toStrictEqual(first);
    // Not a repeat: the stale version is refused, as ever.
    await expect(users.update(user.id, { firstName: 'Mine', lastName: 'Too' }, { version: user.version })).rejects.toBeInstanceOf(PreconditionFailedError);
    // A repeat whose changes are not what the row holds, in any one field.
    await expect(users.update(user.id, { firstName: 'Mine', lastName: 'Other' }, { version: user.version }, repeat)).rejects.toBeInstanceOf(PreconditionFailedError);
    // A repeat of an older write: the row is two versions past what it expected.
    await expect(users.update(user.id, { firstName: 'Mine' }, { version: user.version - 1 }, repeat)).rejects.toBeInstanceOf(PreconditionFailedError);
    // Once someone else has written, the repeat cannot be told from a lost race: refused.
    await users.update(user.id, { phone: '555' });
    await expect(users.update(user.id, { firstName: 'Mine', lastName: 'Too' }, { version: user.version }, repeat)).rejects.toBeInstanceOf(PreconditionFailedError);
    expect(await users.findById(user.id)).toMatchObject({ firstName: 'Mine', lastName: 'Too', phone: '555', version: user.version + 2 });
  });

  it('when 20 writers race with one stale version, then exactly one wins, and as repeats of one write all of them get its row', async () => {
    const user = await newUser();
    const race = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => users.update(user.id, { firstName: `racer ${i}` }, { version: user.version })));
    expect(race.filter((outcome) => outcome.status === 'fulfilled')).toHaveLength(1);
    for (const outcome of race) if (outcome.status === 'rejected') expect(outcome.reason).toBeInstanceOf(PreconditionFailedError);

    const other = await newUser();
    const repeats = await Promise.all(Array.from({ length: 20 }, () => users.update(other.id, { firstName: 'same' }, { version: other.version }, { repeat: true })));
    for (const row of repeats) expect(row).toMatchObject({ firstName: 'same', version: other.version + 1 });
    expect((await users.findById(other.id))?.version).toBe(other.version + 1);
  });

  it('when a revocation is repeated, then it returns the pairs revoked for that reason lately, and a first attempt returns only its own', async () => {
    const user = await newUser();
    const pair = await storePair(tokens, newToken(user.id));
    const spared: OAuthToken = await storePair(tokens, newToken(user.id));
    expect(await tokens.revoke(pair.id, 'logout')).toEqual([pair.accessTokenHash]);
    expect(await tokens.revoke(pair.id, 'logout')).toEqual([]);
    expect(await tokens.revoke(pair.id, 'logout', { repeat: true })).toEqual([pair.accessTokenHash]);
    // Another reason is another write: a logout is not what revoke-all repeats.
    expect(await tokens.revokeAllForUser(user.id, undefined, 'revoked', { repeat: true })).toEqual([spared.accessTokenHash]);
    expect(await tokens.revokeAllForUser(user.id, undefined, 'revoked')).toEqual([]);
  });
});
