// Searching and sorting the user listing (GET /api/v1/users `q` and `sort`, ListUsers `q` and
// `sort`): the same answers over every public protocol, and hostile values refused alike.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClients, closeAll, type ApiClient } from '../helpers/protocols.ts';
import { ADMIN, startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;
let clients: ApiClient[];
let admin: string;
// Every user of this file starts with the tag, so the listing can be narrowed to them whatever
// other files or runs left in the database.
const tag = `s${randomBytes(4).toString('hex')}`;
const PASSWORD = 'Sturdy-Passw0rd!';
/** The users in registration order (so in id and creation order). */
const users: { id: number; username: string }[] = [];

beforeAll(async () => {
  t = await startTestServer();
  clients = apiClients(t.baseUrl);
  const rest = clients[0]!;
  const bodies = [
    { username: `${tag}_ann`, email: `${tag}_ann@example.com`, firstName: 'Ann', lastName: 'Lee' },
    { username: `${tag}xbob`, email: `bob_${tag}@example.com`, firstName: 'Bob', lastName: 'Marsh' },
    // Found by first name only, and by last name only.
    { username: `carol_${tag}`, email: `carol_${tag}@example.com`, firstName: `${tag.toUpperCase()}Carol`, lastName: 'Ng' },
    { username: `dave_${tag}`, email: `dave_${tag}@example.com`, firstName: 'Dave', lastName: `${tag}dave` },
  ];
  for (const body of bodies) {
    const outcome = await rest.register({ ...body, password: PASSWORD });
    if (outcome.data === undefined) throw new Error(`register: ${JSON.stringify(outcome)}`);
    users.push({ id: outcome.data.user.id, username: body.username });
  }
  const login = await rest.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
  admin = login.data!.tokens.accessToken;
});

afterAll(async () => {
  closeAll(clients);
  await t.close();
});

const usernames = (outcome: { data?: { items: { username: string }[] } }) => outcome.data?.items.map((user) => user.username);
const byId = () => users.map((user) => user.username);

describe.each(['rest', 'connect-json', 'connect-binary', 'grpc-web', 'grpc'])('listing users over %s', (protocol) => {
  const client = () => clients.find((c) => c.protocol === protocol)!;

  it('when q is given, then users whose username, e-mail, first or last name starts with it, ignoring case', async () => {
    const outcome = await client().listUsers(admin, { q: tag.toUpperCase() });
    expect(outcome.code).toBe('ok');
    expect(usernames(outcome)).toEqual(byId());
    expect(outcome.data?.pagination.total).toBe(4);
    // Only the e-mail of bob starts with "bob_<tag>"; a match inside a field does not count.
    expect(usernames(await client().listUsers(admin, { q: `bob_${tag}` }))).toEqual([`${tag}xbob`]);
    expect(usernames(await client().listUsers(admin, { q: `ann_${tag}` }))).toEqual([]);
  });

  it('when names are not ASCII, then q finds them by any prefix, in either case: a final sigma, a dotted capital I', async () => {
    // JavaScript lower-cases a word-final Σ to ς and İ to i + U+0307; the database folds the
    // stored names its own way, so the query must be folded by the same hand.
    const own = `u${randomBytes(4).toString('hex')}`;
    const registered = await client().register({
      username: `${own}_greek`,
      email: `${own}_greek@example.com`,
      firstName: `${own}ΣΊΣΥΦΟΣ`,
      lastName: `${own}İstanbul`,
      password: PASSWORD,
    });
    expect(registered.code).toBe('ok');
    for (const q of [`${own}ΣΊΣ`, `${own}ΣΊΣΥ`, `${own}σίσ`, `${own}ΣΊΣΥΦΟΣ`, `${own}İ`, `${own}İst`]) {
      expect(usernames(await client().listUsers(admin, { q })), q).toEqual([`${own}_greek`]);
    }
  });

  it('when q holds SQL wildcards, then they match only themselves', async () => {
    // As a wildcard, `_` would also match the x of `<tag>xbob`.
    expect(usernames(await client().listUsers(admin, { q: `${tag}_` }))).toEqual([`${tag}_ann`]);
    const percent = await client().listUsers(admin, { q: `${tag}%` });
    expect(percent.code).toBe('ok');
    expect(percent.data?.pagination.total).toBe(0);
    expect((await client().listUsers(admin, { q: '%' })).data?.pagination.total).toBe(0);
    expect((await client().listUsers(admin, { q: '\\' })).data?.pagination.total).toBe(0);
  });

  it('when sort is given, then the page comes in that order, ties and all', async () => {
    expect(usernames(await client().listUsers(admin, { q: tag, sort: '-createdAt' }))).toEqual(byId().reverse());
    expect(usernames(await client().listUsers(admin, { q: tag, sort: 'createdAt' }))).toEqual(byId());
    expect(usernames(await client().listUsers(admin, { q: tag, sort: 'id' }))).toEqual(byId());
  });

  it('when sorting by last login, then users who never logged in count as the least recent', async () => {
    const rest = clients[0]!;
    await rest.login({ usernameOrEmail: `dave_${tag}`, password: PASSWORD });
    const recentFirst = usernames(await client().listUsers(admin, { q: tag, sort: '-lastLoginAt' }));
    expect(recentFirst?.[0]).toBe(`dave_${tag}`);
    const leastRecentFirst = usernames(await client().listUsers(admin, { q: tag, sort: 'lastLoginAt' }));
    expect(leastRecentFirst?.at(-1)).toBe(`dave_${tag}`);
  });

  it('when the page is past the end of a search, then no users and the true total', async () => {
    const outcome = await client().listUsers(admin, { q: tag, page: 3, perPage: 2 });
    expect(outcome.code).toBe('ok');
    expect(outcome.data?.items).toEqual([]);
    expect(outcome.data?.pagination).toMatchObject({ page: 3, perPage: 2, total: 4, totalPages: 2 });
  });

  it('when sort is not one of the orders or q is empty or longer than 255 characters, then invalid_argument', async () => {
    for (const query of [{ sort: 'username' }, { sort: 'createdAt; DROP TABLE users' }, { sort: '-id' }, { q: '' }, { q: 'a'.repeat(256) }]) {
      const outcome = await client().listUsers(admin, query);
      expect(outcome.code, JSON.stringify(query)).toBe('invalid_argument');
    }
    expect((await client().listUsers(admin, { q: 'a'.repeat(255) })).code).toBe('ok');
  });

  it('when a user who is not an admin searches, then permission_denied', async () => {
    const rest = clients[0]!;
    const login = await rest.login({ usernameOrEmail: `${tag}_ann`, password: PASSWORD });
    expect((await client().listUsers(login.data!.tokens.accessToken, { q: tag })).code).toBe('permission_denied');
  });
});

describe('a REST search as HTML forms and URLSearchParams write it', () => {
  it('when q writes a space as + (or unencoded reserved characters), then it is read as written: + is a space, %2B a plus', async () => {
    // Found by an attacker (helper 86): `q=a+b` was refused ("must be url encoded"), so a search of
    // two words from a form, URLSearchParams or Python's requests never reached the listing.
    const other = `p${tag}`;
    const registered = await clients[0]!.register({
      username: `${other}_plus`,
      email: `${other}_plus@example.com`,
      firstName: `${other} Ada`,
      lastName: 'Plus',
      password: PASSWORD,
    });
    expect(registered.code).toBe('ok');
    const search = async (query: string) => {
      const response = await t.request.get(`/api/v1/users?${query}`).set('authorization', `Bearer ${admin}`);
      return { status: response.status, found: response.status === 200 ? (response.body as { items: { username: string }[] }).items.map((user) => user.username) : response.body };
    };
    const found = { status: 200, found: [`${other}_plus`] };
    expect(await search(new URLSearchParams({ q: `${other} Ada` }).toString())).toEqual(found);
    expect(await search(`q=${other}+Ada`)).toEqual(found);
    expect(await search(`q=${other}%20Ada`)).toEqual(found);
    expect(await search(`q=${other}%2BAda`)).toEqual({ status: 200, found: [] });
    // A reserved character unencoded is itself, as its encoding is.
    expect(await search(`q=${other}:`)).toEqual({ status: 200, found: [] });
  });
});
