// The bootstrap administrator when no active administrator is left (issue 9 defect 5): the API
// refuses to get there, but a database edited by hand, or restored from before the rule, can be
// there. The bootstrap variables must then say clearly why they cannot help, and, with
// ADMIN_BOOTSTRAP_RECOVER=true, restore the account.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, capturingLogger, createTestApp, holdRows, loginAdmin, register, TEST_DATABASE_URL, type TestApp } from '../helpers/test-app.ts';
import { isMysqlUrl } from '../helpers/test-database.ts';

let t: TestApp;
/** The password the recovery sets, from ADMIN_PASSWORD. */
const newPassword = 'Recovered@2468';

beforeAll(async () => {
  t = await createTestApp();
});

afterAll(async () => {
  await t.close();
});

async function auditTypes(userId: number, expected: number): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rows = await t.sql<{ type: string }>('SELECT type::text AS type FROM audit_events WHERE user_id = $1 ORDER BY id', [userId]);
    if (rows.length >= expected || Date.now() > deadline) return rows.map((row) => row.type);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function bootstrapAdminId(): Promise<number> {
  const [row] = await t.sql<{ id: number }>('SELECT id FROM users WHERE username_key = $1', [ADMIN.username]);
  if (row === undefined) throw new Error('the bootstrap administrator does not exist');
  return row.id;
}

describe('a bootstrap administrator registration would refuse', () => {
  it('when ADMIN_PASSWORD, ADMIN_EMAIL or ADMIN_USERNAME would be refused at registration and the account is to be created, then the start stops naming each variable', async () => {
    // Found by an attacker (helper 95): ADMIN_PASSWORD=a made an ACTIVE ADMIN one could log in as,
    // and a common password stopped the start as a stack trace naming no variable. Each case runs
    // on a database of its own, with no administrator yet, where the account would be created.
    const cases = [
      [{ ADMIN_USERNAME: 'weak_admin', ADMIN_EMAIL: 'weak@arcana.test', ADMIN_PASSWORD: 'a' }, /ADMIN_PASSWORD/],
      [{ ADMIN_USERNAME: 'common_admin', ADMIN_EMAIL: 'common@arcana.test', ADMIN_PASSWORD: 'Password1!' }, /ADMIN_PASSWORD is too common/],
      [{ ADMIN_USERNAME: 'no spaces', ADMIN_EMAIL: 'not-an-email', ADMIN_PASSWORD: 'Str0ng!Passw0rd' }, /ADMIN_USERNAME[\s\S]*ADMIN_EMAIL|ADMIN_EMAIL[\s\S]*ADMIN_USERNAME/],
    ] as const;
    for (const [env, named] of cases) await expect(createTestApp(env), JSON.stringify(env)).rejects.toThrow(named);
  });

  it('when the bootstrap account exists already, then variables that registration would now refuse do not stop the start', async () => {
    // Found by an attacker (helper 96): the first form of the check ran at every start, and a
    // deployment whose variables predate it (admin@localhost, say) stopped starting, though they
    // are left alone once the account exists.
    const legacy = await createTestApp({ ADMIN_EMAIL: 'admin@localhost', ADMIN_PASSWORD: 'a' }, { sameDatabaseAs: t });
    await legacy.close();
    expect(await t.sql('SELECT 1 FROM users WHERE email = $1', ['admin@localhost'])).toHaveLength(0);
  });
});

describe('bootstrap administrator without an active administrator', () => {
  it('when the bootstrap account exists but is not an active admin, then start-up logs an error saying why and what to do, and changes nothing', async () => {
    const adminToken = await loginAdmin(t);
    await t.sql("UPDATE users SET status = 'SUSPENDED', is_active = false, role = 'USER' WHERE username_key = $1", [ADMIN.username]);
    const { logger, lines } = capturingLogger();
    const second = await createTestApp({}, { sameDatabaseAs: t, logger });
    try {
      const error = lines.find((line) => line.level === 'error');
      expect(error?.msg).toMatch(/no active administrator exists/);
      expect(error?.msg).toMatch(/ADMIN_BOOTSTRAP_RECOVER=true/);
      expect(error).toMatchObject({ username: ADMIN.username, role: 'USER', status: 'SUSPENDED' });
      const [row] = await t.sql<{ status: string; role: string }>('SELECT status::text AS status, role::text AS role FROM users WHERE username_key = $1', [ADMIN.username]);
      expect(row).toEqual({ status: 'SUSPENDED', role: 'USER' });
      // The old session still cannot act.
      expect((await t.request.get('/api/v1/users').set('authorization', `Bearer ${adminToken}`)).status).toBe(401);
    } finally {
      await second.close();
    }
  });

  it('when ADMIN_BOOTSTRAP_RECOVER=true and no active admin exists, then the account is an ACTIVE ADMIN again with the configured password, its sessions end, and it is audited', async () => {
    const id = await bootstrapAdminId();
    // A session opened before the account was taken over must not survive the recovery.
    await t.sql("UPDATE users SET status = 'ACTIVE', is_active = true WHERE id = $1", [id]);
    const before = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
    expect(before.status).toBe(200);
    const oldToken = before.body.data.tokens.accessToken as string;
    await t.sql("UPDATE users SET status = 'SUSPENDED', is_active = false, role = 'GUEST' WHERE id = $1", [id]);

    const { logger, lines } = capturingLogger();
    const recovering = await createTestApp({ ADMIN_BOOTSTRAP_RECOVER: 'true', ADMIN_PASSWORD: newPassword }, { sameDatabaseAs: t, logger });
    try {
      expect(lines.find((line) => line.level === 'warn' && line.msg.includes('restored the bootstrap account'))).toBeDefined();
      const [row] = await t.sql<{ status: string; role: string }>('SELECT status::text AS status, role::text AS role FROM users WHERE id = $1', [id]);
      expect(row).toEqual({ status: 'ACTIVE', role: 'ADMIN' });
      const revoked = await t.sql<{ open: number }>('SELECT count(*)::int AS open FROM oauth_tokens WHERE user_id = $1 AND NOT is_revoked', [id]);
      expect(revoked[0]?.open).toBe(0);
      expect((await recovering.request.get('/api/v1/auth/me').set('authorization', `Bearer ${oldToken}`)).status).toBe(401);
      const login = await recovering.request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: newPassword });
      expect(login.status).toBe(200);
      const users = await recovering.request.get('/api/v1/users').set('authorization', `Bearer ${login.body.data.tokens.accessToken}`);
      expect(users.status).toBe(200);
      const types = await auditTypes(id, 3);
      expect(types).toEqual(expect.arrayContaining(['ROLE_CHANGED', 'STATUS_CHANGED', 'PASSWORD_CHANGED']));
    } finally {
      await recovering.close();
    }
  });

  it('when another active admin exists, then ADMIN_BOOTSTRAP_RECOVER leaves the bootstrap account alone', async () => {
    const login = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: newPassword });
    expect(login.status).toBe(200);
    const adminToken = login.body.data.tokens.accessToken as string;
    const other = await register(t);
    expect((await t.request.put(`/api/v1/users/${other.id}/role`).set('authorization', `Bearer ${adminToken}`).send({ role: 'ADMIN' })).status).toBe(200);
    const id = await bootstrapAdminId();
    const suspended = await t.request.put(`/api/v1/users/${id}/status`).set('authorization', `Bearer ${other.accessToken}`).send({ status: 'SUSPENDED' });
    expect(suspended.status).toBe(200);
    const { logger, lines } = capturingLogger();
    const second = await createTestApp({ ADMIN_BOOTSTRAP_RECOVER: 'true', ADMIN_PASSWORD: 'Another@13579' }, { sameDatabaseAs: t, logger });
    try {
      expect(lines.filter((line) => line.level === 'error' || line.level === 'warn')).toEqual([]);
      const [row] = await t.sql<{ status: string; role: string }>('SELECT status::text AS status, role::text AS role FROM users WHERE id = $1', [id]);
      expect(row).toEqual({ status: 'SUSPENDED', role: 'ADMIN' });
    } finally {
      await second.close();
    }
  });

  // PostgreSQL's view of lock waits tells when both instances wait; the suite runs on it alone.
  it.skipIf(isMysqlUrl(TEST_DATABASE_URL))(
    'when two instances start with ADMIN_BOOTSTRAP_RECOVER=true at once, then one restores the account and the other leaves it as restored',
    async () => {
      // Both read the account suspended, then wait on its row; the second used to write it again
      // and audit a change from SUSPENDED that had already been made.
      const id = await bootstrapAdminId();
      await t.sql("UPDATE users SET role = 'USER' WHERE role = 'ADMIN' AND id <> $1", [id]);
      const [before] = await t.sql<{ version: number }>('SELECT version FROM users WHERE id = $1', [id]);
      const auditedBefore = (await auditTypes(id, 0)).length;
      const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [id]);
      const started: TestApp[] = [];
      try {
        const [holder] = await held.sql<{ id: number }>('SELECT pg_backend_pid() AS id');
        const environment = { ADMIN_BOOTSTRAP_RECOVER: 'true', ADMIN_PASSWORD: 'Twice@97531', DATABASE_LOCK_TIMEOUT_MS: '60000' };
        const starting = [0, 1].map(() => createTestApp(environment, { sameDatabaseAs: t }).then((app) => started.push(app)));
        // Until both wait on the row (or 20 s): the race is then certain. Only waits on this test's
        // lock count (other suites share the server): the first waits on the holder, the second on
        // the first.
        const onHolder = `${Number(holder?.id)} = ANY(pg_blocking_pids(pid))`;
        const waiting = `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE ${onHolder} OR pg_blocking_pids(pid) && ARRAY(SELECT pid FROM pg_stat_activity WHERE ${onHolder})`;
        let blocked = 0;
        for (const deadline = Date.now() + 20_000; blocked < 2 && Date.now() < deadline;) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          blocked = Number((await t.sql<{ n: number | string }>(waiting))[0]?.n ?? 0);
        }
        await held.release();
        await Promise.all(starting);
        expect(blocked).toBe(2);
        const [after] = await t.sql<{ version: number; status: string; role: string }>('SELECT version, status::text AS status, role::text AS role FROM users WHERE id = $1', [id]);
        expect(after).toEqual({ version: (before?.version ?? 0) + 1, status: 'ACTIVE', role: 'ADMIN' });
        const audited = (await auditTypes(id, auditedBefore + 3)).slice(auditedBefore);
        await new Promise((resolve) => setTimeout(resolve, 500));
        expect((await auditTypes(id, 0)).slice(auditedBefore).sort()).toEqual([...audited].sort());
        expect([...audited].sort()).toEqual(['PASSWORD_CHANGED', 'STATUS_CHANGED']);
      } finally {
        await held.release();
        await Promise.all(started.map((app) => app.close()));
      }
    },
    60_000,
  );
});

describe('a bootstrap account that is gone', () => {
  // Found by an attacker: the deployment files pass ADMIN_* on every start, and a bootstrap
  // account deleted by another administrator came back at the next restart as an ACTIVE ADMIN
  // with ADMIN_PASSWORD, with nothing in the audit log.
  it('when it was deleted while another administrator is active, then a restart does not create it again, and says so', async () => {
    const other = await register(t);
    await t.sql("UPDATE users SET role = 'ADMIN', status = 'ACTIVE', is_active = true WHERE id = $1", [other.id]);
    await t.sql('DELETE FROM users WHERE id = $1', [await bootstrapAdminId()]);
    const { logger, lines } = capturingLogger();
    const restarted = await createTestApp({}, { sameDatabaseAs: t, logger });
    try {
      expect(await t.sql('SELECT id FROM users WHERE username_key = $1 OR email = $2', [ADMIN.username, ADMIN.email.toLowerCase()])).toEqual([]);
      expect(lines.find((line) => line.level === 'warn')?.msg).toMatch(/not created again/);
      expect((await restarted.request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: ADMIN.password })).status).toBe(401);
    } finally {
      await restarted.close();
    }
  });

  it('when no administrator is active either, then start-up creates it, audited as a role granted', async () => {
    await t.sql("UPDATE users SET role = 'USER' WHERE role = 'ADMIN'");
    const restarted = await createTestApp({}, { sameDatabaseAs: t });
    try {
      const id = await bootstrapAdminId();
      const [row] = await t.sql<{ status: string; role: string }>('SELECT status::text AS status, role::text AS role FROM users WHERE id = $1', [id]);
      expect(row).toEqual({ status: 'ACTIVE', role: 'ADMIN' });
      expect(await auditTypes(id, 1)).toEqual(['ROLE_CHANGED']);
      expect((await restarted.request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: ADMIN.password })).status).toBe(200);
    } finally {
      await restarted.close();
    }
  });
});
