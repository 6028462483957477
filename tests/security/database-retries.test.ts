// The data layer runs a call the database rolled back as a deadlock victim again, twice at most
// (withDatabaseErrors, src/repositories/prisma-errors.ts). An attacker (or plain contention) that
// keeps a write colliding must meet that bound: three attempts, then a 503 with Retry-After.
// Real deadlocks on PostgreSQL, made by a second connection that locks in the opposite order.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, type ProtocolName } from '../helpers/protocols.ts';
import { holdRows, loginAdmin, newUser, register, startTestServer, TEST_DATABASE_URL, type RowsHeld, type TestServer } from '../helpers/test-app.ts';
import { isMysqlUrl } from '../helpers/test-database.ts';

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer();
});

afterAll(async () => {
  await t.close();
});

/**
 * Makes every transaction of the request in flight that locks user `userId`'s row and then waits
 * on the user's token rows a deadlock victim, until `done` resolves. `held` holds the token rows;
 * each time the request's UPDATE waits on them, `held` asks for the user's row in a savepoint: the
 * request, which has waited longer, detects the deadlock first and is rolled back. The savepoint
 * is then rolled back (its lock on the user's row goes, the token rows stay held) for the retry.
 * Returns how many of the request's transactions were made victims.
 */
async function collideUntil(held: RowsHeld, userId: number, done: Promise<unknown>): Promise<number> {
  const state = { finished: false };
  void done.finally(() => (state.finished = true));
  let victims = 0;
  while (!state.finished) {
    // Read outside `held`'s transaction, which would see the activity as it was when it began.
    const [waiting] = await t.sql<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE 'UPDATE%oauth_tokens%'");
    if (Number(waiting?.n) === 0) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      continue;
    }
    await held.sql('SAVEPOINT collide');
    try {
      await held.sql('SELECT id FROM users WHERE id = $1 FOR UPDATE', [userId]);
      victims += 1;
    } catch {
      // This connection was the victim instead: the request goes on.
    }
    await held.sql('ROLLBACK TO SAVEPOINT collide');
  }
  return victims;
}

describe.runIf(!isMysqlUrl(TEST_DATABASE_URL))('a write the database keeps rolling back as a deadlock victim', () => {
  it('when a logout collides with a concurrent transaction every time, then it is tried three times at most and answered 503 with Retry-After', async () => {
    const user = await register(t);
    const held = await holdRows(t, 'SELECT id FROM oauth_tokens WHERE user_id = $1 FOR UPDATE', [user.id]);
    try {
      const started = Date.now();
      const logout = fetch(`${t.baseUrl}/api/v1/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${user.accessToken}` } });
      const victims = await collideUntil(held, user.id, logout);
      const res = await logout;
      const elapsed = Date.now() - started;
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).not.toBeNull();
      // withDatabaseErrors' bound: COLLISION_ATTEMPTS (3). #revokeFamily wraps its own
      // withDatabaseErrors around #revokeUnderUserLock's, so each outer attempt runs three
      // transactions: 9 deadlocks, ~9 s of a logout holding a connection and the user's row.
      expect({ victims, elapsed: elapsed < 6_000 }).toEqual({ victims: 3, elapsed: true });
    } finally {
      await held.release();
    }
  }, 60_000);
});

describe('an Idempotency-Key retry of CreateUser over another protocol', () => {
  it('when an administrator retries the same creation (no role given) with the same key over another protocol, then it is replayed, not refused as another request', async () => {
    const admin = await loginAdmin(t);
    const pairs: [ProtocolName, ProtocolName][] = [
      ['rest', 'connect-json'],
      ['grpc', 'rest'],
    ];
    const seen: string[] = [];
    for (const [first, second] of pairs) {
      const a = apiClient(first, t.baseUrl);
      const b = apiClient(second, t.baseUrl);
      try {
        const body = newUser('xproto');
        const key = randomUUID();
        const created = await a.createUser(admin, body, { headers: { 'idempotency-key': key } });
        expect(created.code).toBe('ok');
        // The client lost the answer and retried through its other transport (a gateway, an SDK
        // that switched from REST to gRPC): the same key, the same body.
        const retried = await b.createUser(admin, body, { headers: { 'idempotency-key': key } });
        seen.push(`${first}->${second}: ${retried.code} ${retried.headers.get('idempotent-replayed') ?? ''}`);
      } finally {
        a.close();
        b.close();
      }
    }
    // REST's request validation fills in openapi.yaml's `role` default (USER) before the
    // fingerprint is taken; RPC leaves the role unspecified: two fingerprints for one request.
    expect(seen).toEqual(['rest->connect-json: ok true', 'grpc->rest: ok true']);
  });
});
