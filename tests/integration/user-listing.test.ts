// The page of users is the one statement sent to the driver adapter past Prisma's query engine
// (src/infrastructure/database/raw-reader.ts), so its rows are decoded by our code rather than
// Prisma's. Each row it returns must be exactly the row Prisma's own model read returns, every
// field's value and type (Dates, booleans, nulls, enums), and nothing more (no password hash), on
// every database kind: PostgreSQL and PGlite in the monolithic project, MariaDB in the `mariadb`
// one. A server out of reach must be a 503, as it is through Prisma.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Prisma, type User } from '../../gen/prisma/client.ts';
import { MIGRATIONS_PATH } from '../../src/app.ts';
import { UnavailableError } from '../../src/domain/errors.ts';
import { createDatabase, type Database } from '../../src/infrastructure/database/database.ts';
import { applyMigrations } from '../../src/infrastructure/database/migrations.ts';
import { PrismaTokenRepository } from '../../src/repositories/token-repository.ts';
import { PrismaUserRepository, type UserFilter } from '../../src/repositories/user-repository.ts';
import { TEST_DATABASE_URL, createTestApp, monolithOf, type TestApp } from '../helpers/test-app.ts';
import { isMysqlUrl } from '../helpers/test-database.ts';
import { newTokenRecord } from '../helpers/token-records.ts';

const onMysql = isMysqlUrl(TEST_DATABASE_URL);

let t: TestApp;
let pglite: Database | undefined;

beforeAll(async () => {
  t = await createTestApp();
  if (!onMysql) {
    pglite = await createDatabase({ dataDir: 'memory://' });
    await applyMigrations(pglite, MIGRATIONS_PATH);
  }
}, 60_000);

afterAll(async () => {
  await pglite?.close();
  await t.close();
});

/** Users whose fields take every shape a row can have: nulls and values, each enum, old and new times. */
async function seed(database: Database): Promise<void> {
  const repository = new PrismaUserRepository(database);
  const created: User[] = [];
  for (const [index, name] of ['alice', 'Alfred', 'bob', 'carol', 'dave', 'erin', 'frank'].entries()) {
    created.push(
      await repository.create({
        username: `${name}_${index}`,
        email: `${name.toLowerCase()}${index}@listing.example`,
        passwordHash: '$2b$04$notarealhashnotarealhashnotarealhashnotarealhashnotre',
        ...(index % 2 === 0 ? { firstName: `Ådne ${name}`, lastName: 'Ünïcødé ✓' } : {}),
        ...(index === 3 ? { phone: '+15550100' } : {}),
        role: index === 1 ? 'ADMIN' : index === 4 ? 'GUEST' : 'USER',
      }),
    );
  }
  await repository.update(created[2]!.id, { status: 'SUSPENDED', isActive: false });
  await repository.update(created[3]!.id, { isVerified: true, avatarUrl: 'https://cdn.example/a.png' });
  // Milliseconds, and an instant before 1970 (a negative epoch), survive the decoding. A login's
  // pair records the login.
  const tokens = new PrismaTokenRepository(database.prisma, database.dialect);
  for (const [user, at] of [
    [created[0]!, '2026-01-02T03:04:05.678Z'],
    [created[5]!, '1969-07-20T20:17:40.123Z'],
  ] as const) {
    expect(await tokens.create(newTokenRecord(user.id), user.passwordHash, new Date(at))).not.toBeNull();
  }
}

const FILTERS: UserFilter[] = [
  { page: 1, perPage: 4 },
  { page: 2, perPage: 3, sort: '-createdAt' },
  { page: 1, perPage: 20, sort: 'lastLoginAt' },
  { page: 1, perPage: 20, sort: '-lastLoginAt' },
  { page: 1, perPage: 20, role: 'ADMIN' },
  { page: 1, perPage: 20, status: 'SUSPENDED' },
  { page: 1, perPage: 20, q: 'AL' },
  { page: 1, perPage: 20, q: 'Ådne' },
];

async function expectListingAsPrismaReadsIt(database: Database): Promise<void> {
  await seed(database);
  const repository = new PrismaUserRepository(database);
  // Profiles: a listing never carries password hashes.
  const all = await database.prisma.user.findMany({ orderBy: { id: 'asc' }, omit: { passwordHash: true } });
  for (const filter of FILTERS) {
    const queriesBefore = database.queryCount();
    const { users, total } = await repository.list(filter);
    // One statement per page, counted like every other query.
    expect(database.queryCount() - queriesBefore, JSON.stringify(filter)).toBe(1);
    expect(users.length, JSON.stringify(filter)).toBeGreaterThan(0);
    const byId = new Map(all.map((user) => [user.id, user]));
    // Same values and same JavaScript types as Prisma's model read of the same rows.
    expect(users, JSON.stringify(filter)).toStrictEqual(users.map((user) => byId.get(user.id)));
    expect(typeof total).toBe('number');
    expect(total).toBeGreaterThanOrEqual(users.length);
  }
  // The count is the whole listing's, with the page read from its first row.
  expect((await repository.list({ page: 1, perPage: 2 })).total).toBe(all.length);
  expect((await repository.list({ page: 1, perPage: 20, role: 'ADMIN' })).total).toBe(all.filter((user) => user.role === 'ADMIN').length);
  // Past the end: no users, but the count still.
  expect(await repository.list({ page: 50, perPage: 20 })).toStrictEqual({ users: [], total: all.length });
  // The first page in id order is the first users by id.
  expect((await repository.list({ page: 1, perPage: 4 })).users).toStrictEqual(all.slice(0, 4));
  // A 64-bit count arrives as a bigint, as from $queryRaw.
  const [row] = await database.readRows<{ n: unknown }>(Prisma.sql`SELECT count(*) AS n FROM users`);
  expect(row).toStrictEqual({ n: BigInt(all.length) });
}

describe('the page of users, read past Prisma’s query engine', () => {
  it(`when listed on ${onMysql ? 'MariaDB' : 'PostgreSQL'}, then every row is what Prisma reads for it`, async () => {
    await expectListingAsPrismaReadsIt(monolithOf(t).database);
  });

  it.skipIf(onMysql)('when listed on PGlite, then every row is what Prisma reads for it', async () => {
    await expectListingAsPrismaReadsIt(pglite!);
  });

  it.skipIf(onMysql)('when a migration changes a listed column’s type while the statement is prepared on every connection, then listing goes on', async () => {
    const database = monolithOf(t).database;
    const repository = new PrismaUserRepository(database);
    const listMany = () => Promise.all(Array.from({ length: 30 }, () => repository.list({ page: 1, perPage: 5, sort: '-createdAt' })));
    // Prepared on each of the pool's connections.
    await listMany();
    // What a rolling deployment's migration may do under a running process: PostgreSQL then
    // refuses the prepared statement ("cached plan must not change result type").
    await t.sql('ALTER TABLE users ALTER COLUMN phone TYPE varchar(40)');
    try {
      const pages = await listMany();
      expect(pages.every((page) => page.users.length > 0 && page.total === pages[0]?.total)).toBe(true);
      expect((await listMany()).length).toBe(30);
    } finally {
      await t.sql('ALTER TABLE users ALTER COLUMN phone TYPE varchar(20)');
    }
    // And back again.
    expect((await listMany()).every((page) => page.users.length > 0)).toBe(true);
  });

  it('when the server is out of reach, then listing fails as unavailable (503), not as an unknown error', async () => {
    // Port 9 (discard) has no database server; short timeouts keep the test quick.
    const databaseUrl = onMysql ? 'mysql://root@127.0.0.1:9/nowhere?connectTimeout=300&acquireTimeout=600' : 'postgresql://postgres@127.0.0.1:9/test';
    const database = await createDatabase({ databaseUrl, dataDir: 'memory://' });
    try {
      await expect(new PrismaUserRepository(database).list({ page: 1, perPage: 20 })).rejects.toBeInstanceOf(UnavailableError);
    } finally {
      await database.close();
    }
  }, 30_000);
});
