// The audit log's invariant under racing administrators (helper 117): every committed change has
// exactly one event, with the fields it changed, and no uncommitted change has one. A profile
// edit's USER_UPDATED names the fields it changed; they were compared with the row as it was read
// before the write's transaction, which may then write over a row another administrator changed
// meanwhile (the edit is unconditional unless the caller names a version).
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { ADMIN, holdRows, register, startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer();
});

afterAll(async () => {
  await t.close();
});

interface UserRow {
  version: number;
  is_verified: boolean | number;
  first_name: string | null;
  email: string;
}

async function row(id: number): Promise<UserRow | undefined> {
  return (await t.sql<UserRow>('SELECT version, is_verified, first_name, email FROM users WHERE id = $1', [id]))[0];
}

/** The user's events of a type, oldest first (these are written in the change's own transaction). */
async function events(userId: number, type: string) {
  return t.sql<{ details: Record<string, unknown> | string | null; actor_id: number | null }>(
    'SELECT details, actor_id FROM audit_events WHERE user_id = $1 AND type = $2 ORDER BY id',
    [userId, type],
  );
}

const fieldsOf = (details: Record<string, unknown> | string | null): unknown => (typeof details === 'string' ? (JSON.parse(details) as Record<string, unknown>) : details)?.fields;

describe.each(PROTOCOLS)('audit events of racing administrators over %s', (protocol: ProtocolName) => {
  let client: ApiClient;
  let admin: string;

  beforeAll(async () => {
    client = apiClient(protocol, t.baseUrl);
    const login = await client.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
    expect(login.code).toBe('ok');
    admin = login.data?.tokens.accessToken ?? '';
  });

  afterAll(() => {
    client.close();
  });

  it('when an edit that finds a first name already at its value commits after another administrator changed it, then the change back is audited', async () => {
    const user = await register(t);
    expect((await client.updateUser(admin, user.id, { firstName: 'Alpha' })).code).toBe('ok');
    const before = await row(user.id);
    // Both edits read the row (first name Alpha) and then queue for its lock, Bravo's first.
    const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [user.id]);
    let outcomes;
    try {
      const bravo = client.updateUser(admin, user.id, { firstName: 'Bravo' });
      await sleep(400);
      const alpha = client.updateUser(admin, user.id, { firstName: 'Alpha' });
      await sleep(400);
      await held.release();
      outcomes = await Promise.all([bravo, alpha]);
    } finally {
      await held.release();
    }
    expect(outcomes.map((outcome) => outcome.code)).toEqual(['ok', 'ok']);
    const after = await row(user.id);
    // Two committed changes: Alpha -> Bravo, then Bravo -> Alpha.
    expect(after?.first_name).toBe('Alpha');
    expect(after?.version).toBe((before?.version ?? 0) + 2);
    const updated = await events(user.id, 'USER_UPDATED');
    // The first edit (to Alpha, before the race) and one per committed change of the race.
    expect(
      updated.map((event) => fieldsOf(event.details)),
      'each committed change of the first name has its event',
    ).toEqual(['firstName', 'firstName', 'firstName']);
  });

  it("when an e-mail change commits after another administrator's verification, then its event names the verification it undid", async () => {
    const user = await register(t);
    const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [user.id]);
    let outcomes;
    try {
      const verify = client.verifyUser(admin, user.id);
      await sleep(400);
      const email = client.updateUser(admin, user.id, { email: `moved_${user.email}` });
      await sleep(400);
      await held.release();
      outcomes = await Promise.all([verify, email]);
    } finally {
      await held.release();
    }
    expect(outcomes.map((outcome) => outcome.code)).toEqual(['ok', 'ok']);
    const after = await row(user.id);
    // Verified, then unverified by the new address.
    expect(Boolean(after?.is_verified)).toBe(false);
    expect(await events(user.id, 'USER_VERIFIED')).toHaveLength(1);
    const updated = await events(user.id, 'USER_UPDATED');
    expect(
      updated.map((event) => fieldsOf(event.details)),
      'the edit that ended the verification says so',
    ).toEqual(['email,isVerified']);
  });
});
