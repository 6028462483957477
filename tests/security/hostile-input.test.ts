// Hostile input at the edge, attacked over every public protocol: defect 8 of the
// adversarial-hardening issue (bytes the database or the decoder cannot take became `internal`;
// single-line fields stored control characters as given) and the last item of defect 12 (Connect
// JSON silently dropped unknown enum names and keys). Each test asserts what a client sees, and
// what was stored, with SQL.
//
// The edge is the controller layer: the same code serves every topology, so this file runs in the
// monolithic project only (vitest's `monolithic` project includes tests/**; the split topologies
// run the API suites listed in vitest.config.ts).
import { create, toBinary, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { encodeEnvelope } from '@connectrpc/connect/protocol';
import http2 from 'node:http2';
import net from 'node:net';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LoginRequestSchema, RegisterRequestSchema } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { ListUsersRequestSchema, UpdateUserRequestSchema } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { HealthCheckRequestSchema } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { ServerReflectionRequestSchema } from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import { REFLECTION_REQUESTS_PER_STREAM } from '../../src/rpc/reflection-service.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { apiClients, closeAll, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { bearer, loginAdmin, newUser, register, startTestServer, type TestServer } from '../helpers/test-app.ts';
import { compress, RawClient, RPC_PROTOCOLS, type RawAnswer, type RpcProtocol } from './raw-protocols.ts';

const logLines: string[] = [];
let t: TestServer;
let raw: RawClient;
let clients: ApiClient[];
let admin: string;

beforeAll(async () => {
  const logger = createLogger({ level: 'info', destination: { write: (line: string) => void logLines.push(line) } });
  t = await startTestServer({}, { logger });
  raw = new RawClient(t.baseUrl);
  clients = apiClients(t.baseUrl);
  admin = await loginAdmin(t);
});

afterAll(async () => {
  closeAll(clients);
  raw.close();
  await t.close();
});

const clientFor = (protocol: ProtocolName): ApiClient => {
  const client = clients.find((candidate) => candidate.protocol === protocol);
  if (client === undefined) throw new Error(`no client for ${protocol}`);
  return client;
};

/** How a protocol names a field: REST by its JSON name, RPC by its proto name. */
const fieldName = (protocol: string, jsonName: string) => (protocol === 'rest' ? jsonName : jsonName.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));

const usersNamed = async (username: string) => (await t.sql<{ count: string }>('SELECT count(*) FROM users WHERE username = $1', [username]))[0]?.count;

const profileOf = async (id: number) =>
  (await t.sql<{ first_name: string | null; last_name: string | null; phone: string | null }>('SELECT first_name, last_name, phone FROM users WHERE id = $1', [id]))[0];

/** The outcome's code and, for invalid_argument, the fields it names: one value to compare. */
const verdict = (outcome: { code: string; error?: { details: Record<string, string> } }) => ({ code: outcome.code, fields: Object.keys(outcome.error?.details ?? {}).sort() });

const binary = <Desc extends DescMessage>(schema: Desc, init: MessageInitShape<Desc>) => toBinary(schema, create(schema, init));

/** A length-delimited field with exactly these bytes, whatever they are. */
const rawField = (schema: DescMessage, name: string, bytes: Uint8Array) => {
  const field = schema.fields.find((candidate) => candidate.name === name);
  if (field === undefined) throw new Error(`${schema.typeName} has no field ${name}`);
  return new BinaryWriter().tag(field.number, WireType.LengthDelimited).bytes(bytes).finish();
};

const concat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

/** The log lines of one request, by the x-request-id it sent. */
const linesOf = (requestId: string) => logLines.filter((line) => line.includes(`"requestId":"${requestId}"`)).map((line) => JSON.parse(line) as Record<string, unknown>);

describe('query names with brackets: unknown parameters, refused before anything is done', () => {
  it('when a logout or a list carries a bracketed query name, in parallel, then 400 naming it, and the session is still live', async () => {
    const victim = await register(t, newUser('brk'));
    const [logout, injected, nested, list] = await Promise.all([
      t.request.post('/api/v1/auth/logout?x_%3D%5B=1').set(...bearer(victim.accessToken)),
      t.request.get('/api/v1/users?role[$ne]=ADMIN').set(...bearer(admin)),
      t.request.get('/api/v1/users?q[a]=b').set(...bearer(admin)),
      t.request.get('/api/v1/users?role=ADMIN').set(...bearer(admin)),
    ]);
    expect([logout.status, injected.status, nested.status, list.status]).toEqual([400, 400, 400, 200]);
    expect(Object.keys((logout.body as { error: { details: object } }).error.details)).toEqual(['x_=[']);
    expect(Object.keys((injected.body as { error: { details: object } }).error.details)).toEqual(['role[$ne]']);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(victim.accessToken))).status).toBe(200);
  });
});

describe('a query says one thing: nothing in it goes unseen, and a long one is refused unread (helpers 205, 209)', () => {
  it('when a filter, an unknown parameter, a bad value or a repeat stands behind empty pairs, or a query has more pairs than any operation takes, in parallel, then each is applied or refused', async () => {
    const guest = await register(t, newUser('qry'));
    await t.sql('UPDATE users SET role = $1 WHERE id = $2', ['GUEST', guest.id]);
    // Express's parser stopped at 1 000 pairs, empty ones counted: a filter behind them was
    // dropped unseen and the listing answered every user (helper 205). Reading every pair of a
    // 16 KiB query cost 12.5-80 ms of CPU (helper 209): beyond 64 pairs it is refused unread.
    const padding = '&'.repeat(30);
    const [filtered, unknown, zero, repeated, unnamed, long, connectLong] = await Promise.all([
      t.request.get(`/api/v1/users?${padding}role=GUEST&perPage=100`).set(...bearer(admin)),
      t.request.get(`/api/v1/users?${padding}x=1`).set(...bearer(admin)),
      t.request.get(`/api/v1/users?${padding}perPage=0`).set(...bearer(admin)),
      t.request.get(`/api/v1/users?role=GUEST${padding}role=ADMIN`).set(...bearer(admin)),
      t.request.get('/api/v1/users?=').set(...bearer(admin)),
      t.request.get(`/api/v1/users?${'a=1&'.repeat(1000)}role=GUEST`).set(...bearer(admin)),
      fetch(`${t.baseUrl}/arcana.auth.v1.AuthService/GetCurrentUser?connect=v1&encoding=json&message=%7B%7D${'&a=1'.repeat(1000)}`),
    ]);
    const [guests] = await t.sql<{ count: string }>("SELECT count(*) FROM users WHERE role = 'GUEST'");
    expect(filtered.status).toBe(200);
    const page = filtered.body as { items: { role: string }[]; pagination: { total: number } };
    expect(page.pagination.total).toBe(Number(guests?.count));
    expect(new Set(page.items.map((user) => user.role))).toEqual(new Set(['GUEST']));
    const details = (answer: { body: unknown }) => Object.keys((answer.body as { error?: { details?: object } }).error?.details ?? {});
    expect([unknown.status, zero.status, repeated.status, unnamed.status, long.status]).toEqual([400, 400, 400, 400, 400]);
    expect(details(unknown)).toEqual(['x']);
    expect(details(zero)).toEqual(['perPage']);
    expect(details(repeated)).toEqual(['role']);
    // A pair with no name is the query's, not a body's: the request has none.
    expect(details(unnamed)).toEqual(['query']);
    expect(details(long)).toEqual(['query']);
    expect(connectLong.status).toBe(400);
    expect(await connectLong.json()).toEqual({ code: 'invalid_argument', message: 'a Connect GET takes at most 16 query parameters' });
  });
});

describe('NUL in a string field: refused at the edge, before authentication and the database', () => {
  describe.each(PROTOCOLS)('over %s', (protocol) => {
    it('when a registration, a login, a refresh or a profile update carries a NUL, then invalid_argument naming the field and nothing is stored', async () => {
      const api = clientFor(protocol);
      const victim = await register(t, newUser('nul'));
      const body = { ...newUser('nul'), firstName: 'Ada\u0000Lovelace' };
      const [registration, login, loginPassword, refresh, anonymousUpdate, update] = await Promise.all([
        api.register(body),
        api.login({ usernameOrEmail: `${victim.username}\u0000`, password: victim.password }),
        // The one rule holds for passwords too, before any lookup or hash comparison.
        api.login({ usernameOrEmail: victim.username, password: `${victim.password}\u0000anything` }),
        api.refresh(`${victim.refreshToken}\u0000`),
        // A token that authenticates nobody: the answer is still about the field.
        api.updateUser('not-a-token', victim.id, { firstName: 'A\u0000' }),
        api.updateUser(admin, victim.id, { lastName: 'B\u0000' }),
      ]);
      expect({
        registration: verdict(registration),
        login: verdict(login),
        loginPassword: verdict(loginPassword),
        refresh: verdict(refresh),
        anonymousUpdate: verdict(anonymousUpdate),
        update: verdict(update),
      }).toEqual({
        registration: { code: 'invalid_argument', fields: [fieldName(protocol, 'firstName')] },
        login: { code: 'invalid_argument', fields: [fieldName(protocol, 'usernameOrEmail')] },
        loginPassword: { code: 'invalid_argument', fields: ['password'] },
        refresh: { code: 'invalid_argument', fields: [fieldName(protocol, 'refreshToken')] },
        anonymousUpdate: { code: 'invalid_argument', fields: [fieldName(protocol, 'firstName')] },
        update: { code: 'invalid_argument', fields: [fieldName(protocol, 'lastName')] },
      });
      expect(registration.error?.details[fieldName(protocol, 'firstName')]).toMatch(/NUL/);
      expect(await usersNamed(body.username)).toBe('0');
      expect(await profileOf(victim.id)).toEqual({ first_name: null, last_name: null, phone: null });
    });
  });
});

describe('text that is not Unicode: refused on every protocol, never stored as U+FFFD', () => {
  it.each(['rest', 'connect-json'] as const)(
    'over %s: when a name or a login carries an unpaired surrogate, then invalid_argument naming the field and nothing is stored',
    async (protocol) => {
      const api = clientFor(protocol);
      const victim = await register(t, newUser('sur'));
      const body = { ...newUser('sur'), firstName: 'Ada\ud800' };
      const [registration, update, login] = await Promise.all([
        api.register(body),
        api.updateUser(admin, victim.id, { lastName: '\udc00Byron' }),
        api.login({ usernameOrEmail: victim.username, password: `${victim.password}\udbff` }),
      ]);
      expect([verdict(registration), verdict(update), verdict(login)]).toEqual([
        { code: 'invalid_argument', fields: [fieldName(protocol, 'firstName')] },
        { code: 'invalid_argument', fields: [fieldName(protocol, 'lastName')] },
        { code: 'invalid_argument', fields: ['password'] },
      ]);
      expect(await usersNamed(body.username)).toBe('0');
      expect((await profileOf(victim.id))?.last_name).toBeNull();
    },
  );

  it('when a body is not valid UTF-8, then every protocol answers invalid_argument and nothing is stored', async () => {
    // "Ada" + a CESU-8 encoded surrogate (ED A0 80) + "x": bytes, not text.
    const invalid = new Uint8Array([0x41, 0x64, 0x61, 0xed, 0xa0, 0x80, 0x78]);
    const users = [newUser('utf'), newUser('utf'), newUser('utf'), newUser('utf'), newUser('utf')];
    const jsonBody = (user: (typeof users)[number]) => {
      const text = JSON.stringify({ ...user, firstName: '@@' });
      const [before, after] = text.split('@@') as [string, string];
      return concat(new TextEncoder().encode(before), invalid, new TextEncoder().encode(after));
    };
    const protobuf = (user: (typeof users)[number]) => concat(binary(RegisterRequestSchema, user), rawField(RegisterRequestSchema, 'first_name', invalid));
    const answers = await Promise.all([
      raw.rest('POST', '/api/v1/auth/register', { body: jsonBody(users[0]!) }),
      raw.rpc('connect-json', 'arcana.auth.v1.AuthService/Register', jsonBody(users[1]!)),
      ...(['connect-binary', 'grpc-web', 'grpc'] as const).map((protocol, index) => raw.rpc(protocol, 'arcana.auth.v1.AuthService/Register', protobuf(users[2 + index]!))),
    ]);
    expect(answers.map((answer) => answer.code)).toEqual(Array(5).fill('invalid_argument'));
    for (const user of users) expect(await usersNamed(user.username)).toBe('0');
  });
});

describe('requests that say two things: refused, never read one way here and another elsewhere', () => {
  it('when a REST search or a Connect GET is not percent-encoded UTF-8, or a Connect GET gives a parameter twice, in parallel, then invalid_argument naming it; the same search written plainly works', async () => {
    // A name that holds U+FFFD: what `%FF` used to be read as.
    const tag = `rep${Date.now().toString(36)}`;
    const holder = await register(t, newUser('fffd'));
    expect((await clientFor('rest').updateUser(admin, holder.id, { firstName: `\ufffd${tag}` })).code).toBe('ok');
    const message = (q: string) => encodeURIComponent(JSON.stringify({ q })).replaceAll('%EF%BF%BD', '%FF');
    const list = 'arcana.user.v1.UserService/ListUsers';
    const answers = await Promise.all([
      ...['%FF', '%ED%A0%80', '%C0%AF', '%E0%80%80', '%ZZ'].map((bytes) => raw.rest('GET', `/api/v1/users?q=${bytes}${tag}`, { token: admin })),
      raw.connectGet(list, `connect=v1&encoding=json&message=${message(`\ufffd${tag}`)}`, { token: admin }),
      raw.connectGet(list, `connect=v1&encoding=json&message=${message(tag)}&message=${message('zzzz')}`, { token: admin }),
      raw.connectGet(list, `connect=v1&encoding=json&encoding=proto&message=${message(tag)}`, { token: admin }),
    ]);
    expect(answers.map((answer) => answer.code)).toEqual(Array(8).fill('invalid_argument'));
    expect(answers.slice(0, 5).map((answer) => answer.status)).toEqual(Array(5).fill(400));
    const named = answers.map((answer) => Object.keys(answer.violations));
    expect(named).toEqual([['q'], ['q'], ['q'], ['q'], ['q'], ['message'], ['message'], ['encoding']]);

    const found = await Promise.all([
      raw.rest('GET', `/api/v1/users?q=${encodeURIComponent(`\ufffd${tag}`)}`, { token: admin }),
      raw.connectGet(list, { connect: 'v1', encoding: 'json', message: JSON.stringify({ q: tag }) }, { token: admin }),
    ]);
    expect(found.map((answer) => answer.code)).toEqual(['ok', 'ok']);
    expect(JSON.stringify(found[0].json)).toContain(`"id":${holder.id}`);
  });

  it('when a JSON body gives a name twice, in parallel over REST and Connect, then invalid_argument and nothing is stored', async () => {
    const users = [newUser('twice'), newUser('twice')];
    const twice = (user: (typeof users)[number]) =>
      new TextEncoder().encode(`{"username":"${user.username}","username":"${user.username}x","email":"${user.email}","password":"${user.password}"}`);
    const answers = await Promise.all([
      raw.rest('POST', '/api/v1/auth/register', { body: twice(users[0]!) }),
      raw.rpc('connect-json', 'arcana.auth.v1.AuthService/Register', twice(users[1]!)),
    ]);
    expect(answers.map((answer) => answer.code)).toEqual(['invalid_argument', 'invalid_argument']);
    expect(Object.keys(answers[0].violations)).toEqual(['username']);
    for (const user of users) {
      expect(await usersNamed(user.username)).toBe('0');
      expect(await usersNamed(`${user.username}x`)).toBe('0');
    }

    // A name spelled with an escape is the same name.
    const escaped = newUser('twice');
    const spelled = await raw.rest('POST', '/api/v1/auth/register', {
      body: new TextEncoder().encode(`{"username":"${escaped.username}","\\u0075sername":"${escaped.username}x","email":"${escaped.email}","password":"${escaped.password}"}`),
    });
    expect([spelled.status, Object.keys(spelled.violations)]).toEqual([400, ['username']]);

    // JSON in another charset is refused whole (RFC 8259: JSON is UTF-8). body-parser decoded
    // UTF-16, guessing the byte order of `utf-16`, where the check read the bytes another way:
    // a duplicate slipped through in big-endian, a bad escape seen there was a 500, and a
    // little-endian character holding a quote byte (∀ is 22 00) put an earlier check out of step.
    const sly = [newUser('wide'), newUser('wide'), newUser('wide')];
    const twiceText = (user: (typeof sly)[number]) =>
      `{"firstName":"A∀","email":"${user.email}","password":"${user.password}","username":"${user.username}","username":"${user.username}x","lastName":"B∀"}`;
    const bigEndian = (text: string) => new Uint8Array(Buffer.from(text, 'utf16le').swap16());
    const wide = await Promise.all([
      raw.rest('POST', '/api/v1/auth/register', {
        body: new Uint8Array(Buffer.from(twiceText(sly[0]!), 'utf16le')),
        headers: { 'content-type': 'application/json; charset=utf-16le' },
      }),
      raw.rest('POST', '/api/v1/auth/register', { body: bigEndian(twiceText(sly[1]!)), headers: { 'content-type': 'application/json; charset=utf-16' } }),
      raw.rest('POST', '/api/v1/auth/register', {
        body: bigEndian(JSON.stringify({ ...sly[2], firstName: 'Ģirts' })),
        headers: { 'content-type': 'application/json; charset=UTF-16BE' },
      }),
      raw.rest('POST', '/api/v1/auth/login', {
        body: bigEndian('{"usernameOrEmail":"\u7b00\u2200\u5c00\u7800\u2200","password":"xxxxxxxxxx"}'),
        headers: { 'content-type': 'application/json; charset=utf-16' },
      }),
    ]);
    expect(wide.map((answer) => answer.status)).toEqual([415, 415, 415, 415]);
    for (const user of sly) {
      expect(await usersNamed(user.username)).toBe('0');
      expect(await usersNamed(`${user.username}x`)).toBe('0');
    }
  });

  it('when a JSON body ends inside a string or a name holds a bad escape, in parallel, then 400 malformed JSON, and the server goes on answering', async () => {
    // The first duplicate-key check scanned bodies before they were parsed: `{"a` looped for ever
    // (found by the re-attack on it), and a bad escape in a name was a 500.
    const answers = await Promise.all(
      ['{"a', '["\\', '{"x', '{"a\\q":1}', '{"\\u00ZZ":1}'].map((body) => raw.rest('POST', '/api/v1/auth/login', { body: new TextEncoder().encode(body) })),
    );
    expect(answers.map((answer) => [answer.status, answer.message])).toEqual(Array(5).fill([400, 'Malformed JSON in request body']));
    expect((await raw.rest('GET', '/health')).status).toBe(200);
  });
});

describe('single-line fields: names, phone and logins take no control, separator, override or invisible characters', () => {
  const hostile = ['\n', '\r\n', '\t', '\u0007', '\u007f', '\u0085', '\u2028', '\u2029', '\u202e', '\u2066', '\ufeff'];
  // Characters that show as nothing, or as a blank, so that a name passes for another
  // ("ro\u200bot" for "root", helper 60), and runs of combining marks that stack over the rows
  // around them, in any script's marks and across a joiner (helper 61).
  // Every script's nonspacing marks count, and marks of two scripts in one run (helper 212: Arabic
  // Extended-A, Cyrillic, Tibetan, Devanagari and CJK tone marks passed, and so did three acute
  // accents and a Lao tone mark, repeated).
  const invisible = [
    ...['\u200b', '\u00ad', '\u2060', '\u180e', '\u3164', '\u2800', '\u034f', '\ufe0f', '\u0301'.repeat(4), '\u064b'.repeat(4), '\u0301\u0301\u200d\u0301\u0301'],
    ...['\u08e4', '\u2de0', '\ua674', '\u0f7a', '\u0951', '\u302a'].map((mark) => mark.repeat(4)),
    '\u0301\u0301\u0301\u0ec8'.repeat(2),
  ];

  describe.each(PROTOCOLS)('over %s', (protocol) => {
    it('when a name or phone carries one, then invalid_argument naming it and nothing changes; joiners and marks in real names are stored as given', async () => {
      const api = clientFor(protocol);
      const victim = await register(t, newUser('line'));
      const fields = ['firstName', 'lastName', 'phone'] as const;
      const attacks = [...hostile, ...invisible].map((character, index) => {
        const field = fields[index % fields.length] ?? 'firstName';
        return { field, character, answer: api.updateUser(admin, victim.id, { [field]: `Ada${character}Lovelace` }) };
      });
      const created = { ...newUser('line'), lastName: 'Lovelace\u202egnp.exe' };
      const [creation, registration] = await Promise.all([api.register({ ...created }), api.register({ ...newUser('line'), firstName: '\ufeffAda' })]);
      for (const attack of attacks) {
        expect({ character: JSON.stringify(attack.character), ...verdict(await attack.answer) }).toEqual({
          character: JSON.stringify(attack.character),
          code: 'invalid_argument',
          fields: [fieldName(protocol, attack.field)],
        });
      }
      expect([verdict(creation), verdict(registration)]).toEqual([
        { code: 'invalid_argument', fields: [fieldName(protocol, 'lastName')] },
        { code: 'invalid_argument', fields: [fieldName(protocol, 'firstName')] },
      ]);
      expect(await usersNamed(created.username)).toBe('0');
      expect(await profileOf(victim.id)).toEqual({ first_name: null, last_name: null, phone: null });

      // ZWNJ in a Persian name, ZWJ in a Devanagari conjunct, an RLM in a Hebrew one.
      const real = { firstName: 'می\u200cخواهم', lastName: 'क्\u200dष', phone: '+98\u200f 21 555' };
      expect((await api.updateUser(admin, victim.id, real)).code).toBe('ok');
      expect(await profileOf(victim.id)).toEqual({ first_name: real.firstName, last_name: real.lastName, phone: real.phone });
      // Vietnamese written with decomposed marks (two on one letter), an Arabic letter mark, a
      // Tibetan stack of three marks on one letter, Hindi.
      const marked = { firstName: 'Nguye\u0302\u0303n བསྒྲུབས', lastName: '\u061cعلی प्रिया' };
      expect((await api.updateUser(admin, victim.id, marked)).code).toBe('ok');
      expect(await profileOf(victim.id)).toEqual({ first_name: marked.firstName, last_name: marked.lastName, phone: real.phone });
    });
  });

  it.each(PROTOCOLS)(
    'over %s: when a name is only blanks, an avatar URL names no host, or a new password is the current one, in parallel, then invalid_argument naming the field and nothing changes',
    async (protocol) => {
      const api = clientFor(protocol);
      const victim = await register(t, newUser('blank'));
      const hostless = [
        'https://',
        'http:///etc/passwd',
        'https://?x',
        'https://#x',
        'https://@',
        'https://:80',
        'https://user:pw@cdn.example/a.png',
        'https:// cdn.example/a.png',
      ];
      const user = newUser('blank');
      const [names, avatars, registration, sameAgain] = await Promise.all([
        Promise.all([' ', '   ', '\u3000', '\u00a0'].map((blank, index) => api.updateUser(victim.accessToken, victim.id, { [index % 2 === 0 ? 'firstName' : 'lastName']: blank }))),
        Promise.all(hostless.map((avatarUrl) => api.updateUser(victim.accessToken, victim.id, { avatarUrl }))),
        api.register({ ...user, firstName: '  ' }),
        api.changePassword(victim.accessToken, victim.id, { oldPassword: victim.password, newPassword: victim.password }),
      ]);
      expect(names.map(verdict)).toEqual(['firstName', 'lastName', 'firstName', 'lastName'].map((field) => ({ code: 'invalid_argument', fields: [fieldName(protocol, field)] })));
      expect(avatars.map(verdict)).toEqual(hostless.map(() => ({ code: 'invalid_argument', fields: [fieldName(protocol, 'avatarUrl')] })));
      expect(verdict(registration)).toEqual({ code: 'invalid_argument', fields: [fieldName(protocol, 'firstName')] });
      // It would have ended every other session and been audited as a change.
      expect(verdict(sameAgain)).toEqual({ code: 'invalid_argument', fields: [fieldName(protocol, 'newPassword')] });
      expect(await usersNamed(user.username)).toBe('0');
      expect(await profileOf(victim.id)).toEqual({ first_name: null, last_name: null, phone: null });
      expect((await t.sql<{ avatar_url: string | null }>('SELECT avatar_url FROM users WHERE id = $1', [victim.id]))[0]?.avatar_url).toBeNull();
      // The session lives on; names with blanks inside and URLs with a host, a port or an address are taken.
      const taken = { firstName: ' Mary Ann ', lastName: 'van der Berg' };
      expect((await api.updateUser(victim.accessToken, victim.id, taken)).code).toBe('ok');
      for (const avatarUrl of ['https://cdn.example.com:8443/a.png?size=2#top', 'http://192.0.2.7/a.png', 'https://[2001:db8::1]/a.png', 'https://cdn.example.com']) {
        expect((await api.updateUser(victim.accessToken, victim.id, { avatarUrl })).code, avatarUrl).toBe('ok');
      }
    },
  );

  it.each(PROTOCOLS)(
    'over %s: when a new password carries a control character, then invalid_argument; a login with one is checked as a password (existing passwords may have them)',
    async (protocol) => {
      const api = clientFor(protocol);
      const user = newUser('pwd');
      const victim = await register(t, newUser('pwd'));
      const [registration, change, login] = await Promise.all([
        api.register({ ...user, password: 'Passw0rd!\n' }),
        api.changePassword(victim.accessToken, victim.id, { oldPassword: victim.password, newPassword: 'New\tPassw0rd!' }),
        api.login({ usernameOrEmail: victim.username, password: 'Passw0rd!\t' }),
      ]);
      expect([verdict(registration), verdict(change), verdict(login)]).toEqual([
        { code: 'invalid_argument', fields: ['password'] },
        { code: 'invalid_argument', fields: [fieldName(protocol, 'newPassword')] },
        { code: 'unauthenticated', fields: [] },
      ]);
      expect(await usersNamed(user.username)).toBe('0');
      expect((await api.login({ usernameOrEmail: victim.username, password: victim.password })).code).toBe('ok');
    },
  );
});

describe('bodies the decoder cannot take: invalid_argument, logged and rate limited like any request', () => {
  const login = (protocol: RpcProtocol) =>
    protocol === 'connect-json'
      ? json({ usernameOrEmail: 'decoder_victim', password: 'Passw0rd!' })
      : binary(LoginRequestSchema, { usernameOrEmail: 'decoder_victim', password: 'Passw0rd!' });

  /** Every way a body can fail to decode, per protocol; `send` tags the request id with `tag`. */
  const attacks = (protocol: RpcProtocol) => {
    const enveloped = protocol === 'grpc' || protocol === 'grpc-web';
    const message = login(protocol);
    const cut = (body: Uint8Array) => body.subarray(0, body.length - 4);
    const procedure = 'arcana.auth.v1.AuthService/Login';
    const kinds: { key: string; send: (headers: Record<string, string>) => Promise<RawAnswer> }[] = [
      // Only the compressed data is cut: an envelope is rewritten to the length it then holds.
      {
        key: 'gzip-cut',
        send: (headers) => raw.rpc(protocol, procedure, message, { compression: 'gzip', frame: (body) => (enveloped ? fixEnvelope(cut(body)) : cut(body)), headers }),
      },
      { key: 'brotli-garbled', send: (headers) => raw.rpc(protocol, procedure, new Uint8Array([0x0b, 0xff, 0x00, 0x61]), { declaredEncoding: 'br', compressedFlag: 1, headers }) },
      { key: 'gzip-named-plain-sent', send: (headers) => raw.rpc(protocol, procedure, message, { declaredEncoding: 'gzip', compressedFlag: 1, headers }) },
      { key: 'message-cut', send: (headers) => raw.rpc(protocol, procedure, message.subarray(0, message.length - 3), { headers }) },
    ];
    if (enveloped) kinds.push({ key: 'compressed-flag-no-encoding', send: (headers) => raw.rpc(protocol, procedure, message, { compressedFlag: 1, headers }) });
    return kinds;
  };
  const requestId = (tag: string, protocol: string, key: string) => `${tag}-${protocol}-${key}`;

  it.each(RPC_PROTOCOLS)('over %s: when a body is cut short, garbled or wrongly compressed, then invalid_argument, never internal', async (protocol) => {
    const answers = await Promise.all(attacks(protocol).map(async ({ key, send }) => [key, pick(await send({ 'x-request-id': requestId('decode', protocol, key) }))] as const));
    for (const [key, answer] of answers) {
      expect({ key, ...answer }).toEqual({ key, code: 'invalid_argument', status: protocol.startsWith('connect') ? 400 : 200, wellFormed: true });
    }
  });

  it('when a Connect GET message is not base64 or not JSON, then invalid_argument, never internal', async () => {
    const answers = await Promise.all([
      raw.connectGet('arcana.user.v1.UserService/ListUsers', { encoding: 'proto', base64: '1', message: '!!!' }, { token: admin }),
      raw.connectGet('arcana.user.v1.UserService/ListUsers', { encoding: 'json', message: '{"perPage":' }, { token: admin }),
      raw.connectGet('arcana.user.v1.UserService/ListUsers', { encoding: 'json', message: '{"role":"GUEST"}' }, { token: admin }),
    ]);
    expect(answers.map(pick)).toEqual(Array(3).fill({ code: 'invalid_argument', status: 400, wellFormed: true }));
  });

  it('when a Connect GET is refused before it reaches the handler (a message that does not decode, an unknown encoding, a method with side effects), then the refusal says no-store too', async () => {
    // Found by an attacker (helper 171): only answers past the interceptors said no-store, and a
    // 405 is cacheable by heuristics.
    const get = (procedure: string, query: Record<string, string>) =>
      raw.http1('GET', `/arcana.user.v1.UserService/${procedure}?${new URLSearchParams(query).toString()}`, { authorization: `Bearer ${admin}` });
    const answers = await Promise.all([
      get('ListUsers', { encoding: 'json', message: '{"perPage":' }),
      get('ListUsers', { encoding: 'xml', message: '{}' }),
      get('UpdateUser', { encoding: 'json', message: '{}' }),
    ]);
    expect(answers.map((answer) => answer.status)).toEqual([400, 415, 405]);
    for (const answer of answers) expect(answer.headers.get('cache-control'), String(answer.status)).toBe('no-store');
  });

  it('when a REST body is cut short or garbled (gzip, brotli, zstd, deflate), then 400 VALIDATION_ERROR in the envelope', async () => {
    const body = json(newUser('gzip'));
    const answers = await Promise.all(
      [
        ['gzip', raw.rest('POST', '/api/v1/auth/register', { body: gzipCut(body), headers: { 'content-encoding': 'gzip', 'x-request-id': 'decode-rest-gzip' } })],
        ['br', raw.rest('POST', '/api/v1/auth/register', { body: new Uint8Array([0x0b, 0xff, 0x00, 0x61]), headers: { 'content-encoding': 'br' } })],
        ['zstd', raw.rest('POST', '/api/v1/auth/register', { body: new Uint8Array([1, 2, 3, 4, 5, 6, 7]), headers: { 'content-encoding': 'zstd' } })],
        ['deflate', raw.rest('POST', '/api/v1/auth/register', { body: new Uint8Array([0x78, 0x9c, 0xff]), headers: { 'content-encoding': 'deflate' } })],
      ].map(async ([name, answer]) => [name, await (answer as Promise<RawAnswer>)] as const),
    );
    for (const [name, answer] of answers) {
      expect({ name, status: answer.status, code: answer.code, wellFormed: answer.wellFormed }).toEqual({ name, status: 400, code: 'invalid_argument', wellFormed: true });
    }
    expect(linesOf('decode-rest-gzip').map((line) => [line.level, line.msg, line.status])).toEqual([['info', 'request completed', 400]]);
  });

  it('when requests are refused at the edge, then each is logged as one line with its code and no stack, and no line carries a password, hash or token', async () => {
    const sent = RPC_PROTOCOLS.flatMap((protocol) => attacks(protocol).map(({ key, send }) => ({ id: requestId('logged', protocol, key), send })));
    await Promise.all(sent.map(({ id, send }) => send({ 'x-request-id': id })));
    for (const { id } of sent) {
      const lines = linesOf(id).map((line) => ({ level: line.level, code: line.code, stack: JSON.stringify(line).includes('stack') }));
      expect({ id, lines }).toEqual({ id, lines: [{ level: 'info', code: 'invalidargument', stack: false }] });
    }
    expect(logLines.join('\n')).not.toMatch(/Passw0rd|\$2[aby]\$|eyJ/);
  });

  it('when a client floods undecodable bodies in parallel over every protocol, then the rate limit counts them: invalid_argument up to the limit, resource_exhausted after', async () => {
    const limited = await startTestServer({ RATE_LIMIT_MAX: '12', RATE_LIMIT_WINDOW_MS: '60000' });
    const flood = new RawClient(limited.baseUrl);
    try {
      const garbage = new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, index) => {
          const protocol = RPC_PROTOCOLS[index % RPC_PROTOCOLS.length] ?? 'grpc';
          const payload = protocol === 'connect-json' ? new TextEncoder().encode('{"usernameOrEmail":') : garbage;
          return index % 5 === 4
            ? flood.rest('POST', '/api/v1/auth/login', { body: gzipCut(json({ usernameOrEmail: 'x', password: 'y' })), headers: { 'content-encoding': 'gzip' } })
            : flood.rpc(protocol, 'arcana.auth.v1.AuthService/Login', payload);
        }),
      );
      const counts = Object.fromEntries(['invalid_argument', 'resource_exhausted', 'other'].map((code) => [code, 0]));
      for (const answer of answers) counts[answer.code in counts ? answer.code : 'other'] = (counts[answer.code in counts ? answer.code : 'other'] ?? 0) + 1;
      expect(counts).toEqual({ invalid_argument: 12, resource_exhausted: 8, other: 0 });
    } finally {
      flood.close();
      await limited.close();
    }
  });
});

describe('envelopes that lie about their messages: gRPC over HTTP/2 answers as gRPC-Web (connect-es) does', () => {
  // Unary gRPC over HTTP/2 reads and splits its body in rpc-node-handler.ts and request-decoder.ts;
  // gRPC-Web (HTTP/1.1) still goes through connect-es. The same lie must get the same code on both.
  const message = binary(LoginRequestSchema, { usernameOrEmail: 'framing_victim', password: 'Passw0rd!' });
  const header = (flags: number, length: number) => {
    const bytes = new Uint8Array(5);
    bytes[0] = flags;
    new DataView(bytes.buffer).setUint32(1, length);
    return bytes;
  };
  const join = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
  const lies: { key: string; frame: (body: Uint8Array) => Uint8Array; code: string }[] = [
    { key: 'message-shorter-than-its-length', frame: (body) => body.subarray(0, body.length - 3), code: 'invalid_argument' },
    { key: 'header-cut', frame: (body) => body.subarray(0, 3), code: 'invalid_argument' },
    { key: 'bytes-after-the-message', frame: (body) => join(body, new Uint8Array([0, 0, 1])), code: 'invalid_argument' },
    { key: 'two-messages', frame: (body) => join(body, body), code: 'unimplemented' },
    { key: 'no-message', frame: () => new Uint8Array(0), code: 'unimplemented' },
    { key: 'length-over-the-limit', frame: () => join(header(0, 200_000), message), code: 'resource_exhausted' },
    { key: 'length-over-4-GiB-minus-one', frame: () => join(header(0, 0xffffffff), message), code: 'resource_exhausted' },
    // A client's flags say plain or compressed; 0x02 is reserved, 0x80 marks the server's trailers
    // (helper 86: read as a plain message).
    { key: 'reserved-flag', frame: () => join(header(0x02, message.length), message), code: 'invalid_argument' },
    { key: 'trailers-flag', frame: () => join(header(0x80, message.length), message), code: 'invalid_argument' },
  ];

  it('when each lie is sent in parallel over gRPC and gRPC-Web, then both answer it with the same code, never internal, and the next call is answered', async () => {
    const procedure = 'arcana.auth.v1.AuthService/Login';
    const answers = await Promise.all(
      (['grpc', 'grpc-web'] as const).flatMap((protocol) =>
        lies.map(async ({ key, frame }) => ({ protocol, key, code: (await raw.rpc(protocol, procedure, message, { frame })).code })),
      ),
    );
    expect(answers).toEqual((['grpc', 'grpc-web'] as const).flatMap((protocol) => lies.map(({ key, code }) => ({ protocol, key, code }))));
    // The same HTTP/2 session still serves a well-framed call: a wrong password, as any client sees it.
    expect((await raw.rpc('grpc', procedure, message)).code).toBe('unauthenticated');
  });

  it('when a unary call carries thousands of compressed messages, then it is refused for having more than one before any is inflated, over gRPC and gRPC-Web, health checks included', async () => {
    // Each frame held 12 bytes of brotli for 64 KiB of zeros: ~5,000 of them fit the body limit
    // and were all inflated and kept (340 MB) before the "extra message" refusal; six such calls
    // at once took a server to 3.4 GB (helper 67). Health checks are exempt from the rate limit.
    const zeros = compress(new Uint8Array(64 * 1024), 'br');
    const frame = join(header(1, zeros.length), zeros);
    const bomb = join(...Array.from({ length: Math.floor(90_000 / frame.length) }, () => frame));
    // A second message that does not even inflate: refused for being second, not for its bytes.
    const corrupt = join(frame, header(1, 4), new Uint8Array([1, 2, 3, 4]));
    const calls = (['grpc', 'grpc-web'] as const).flatMap((protocol) =>
      ['arcana.auth.v1.AuthService/Login', 'grpc.health.v1.Health/Check'].flatMap((procedure) =>
        (['bomb', 'corrupt'] as const).map(async (kind) => {
          const started = performance.now();
          const answer = await raw.rpc(protocol, procedure, message, { headers: { 'grpc-encoding': 'br' }, frame: () => (kind === 'bomb' ? bomb : corrupt) });
          return { protocol, procedure, kind, code: answer.code, prompt: performance.now() - started < 2_000 };
        }),
      ),
    );
    // Login refuses the second message (`unimplemented`); a health check takes no Brotli at all
    // (HEALTH_ENCODINGS), and is refused for its encoding before a byte is read.
    for (const answer of await Promise.all(calls)) expect(answer).toEqual({ ...answer, code: 'unimplemented', prompt: true });
  });

  it('when health checks are sent in Brotli, a 27-byte bomb of 16 MiB among them, over every RPC protocol at once, then each is unimplemented naming gzip and deflate; in gzip they are served', async () => {
    // Helper 215: Brotli's decoder sets up its window before the 4 KiB output limit can stop it,
    // so each such call cost 10-30 ms of CPU, for calls no rate limit charges.
    const bomb = compress(new Uint8Array(16 * 1024 * 1024), 'br');
    expect(bomb.length).toBeLessThan(64);
    const sent = (protocol: (typeof RPC_PROTOCOLS)[number]) => (protocol === 'connect-json' ? json({}) : binary(HealthCheckRequestSchema, {}));
    const [brotli, gzip] = await Promise.all([
      Promise.all(
        RPC_PROTOCOLS.flatMap((protocol) => [
          raw.rpc(protocol, 'grpc.health.v1.Health/Check', sent(protocol), { compression: 'br' }),
          raw.rpc(protocol, 'grpc.health.v1.Health/Check', sent(protocol), {
            declaredEncoding: 'br',
            frame: () => (protocol.startsWith('connect') ? bomb : join(header(1, bomb.length), bomb)),
          }),
        ]),
      ),
      Promise.all(RPC_PROTOCOLS.map((protocol) => raw.rpc(protocol, 'grpc.health.v1.Health/Check', sent(protocol), { compression: 'gzip' }))),
    ]);
    for (const answer of brotli) {
      expect(answer.code).toBe('unimplemented');
      expect(answer.message).toMatch(/supported encodings are gzip,deflate/);
    }
    expect(gzip.map((answer) => answer.code)).toEqual(RPC_PROTOCOLS.map(() => 'ok'));
    // Other procedures still take Brotli: a wrong password, as any client sees it.
    expect((await raw.rpc('grpc', 'arcana.auth.v1.AuthService/Login', message, { compression: 'br' })).code).toBe('unauthenticated');
  });
});

describe('protocol headers on the unary fast paths: read as connect-es reads them', () => {
  // Unary gRPC over HTTP/2 and unary Connect POSTs are answered in rpc-node-handler.ts; gRPC-Web
  // and what those paths decline go through connect-es. Header names arrive lower-cased.
  const login = binary(LoginRequestSchema, { usernameOrEmail: 'header_victim', password: 'Passw0rd!' });
  const procedure = 'arcana.auth.v1.AuthService/Login';

  it('when deadlines are malformed, in parallel over every RPC protocol, then each is refused invalid_argument before any password is compared', async () => {
    const answers = await Promise.all(
      RPC_PROTOCOLS.map(async (protocol) => {
        const headers: Record<string, string> = protocol.startsWith('connect') ? { 'connect-timeout-ms': 'soon' } : { 'grpc-timeout': 'soon' };
        const payload = protocol === 'connect-json' ? json({ usernameOrEmail: 'header_victim', password: 'Passw0rd!' }) : login;
        return { protocol, code: (await raw.rpc(protocol, procedure, payload, { headers })).code };
      }),
    );
    expect(answers).toEqual(RPC_PROTOCOLS.map((protocol) => ({ protocol, code: 'invalid_argument' })));
  });

  it('when a Connect client accepts gzip, then a large answer comes compressed over HTTP/1.1 and HTTP/2 alike, and decodes to the same page', async () => {
    // More than connect-es's 1 KiB threshold for compressing an answer.
    for (let i = 0; i < 4; i++) await register(t, newUser('gzip_page'));
    const headers = { 'content-type': 'application/json', 'accept-encoding': 'gzip', authorization: `Bearer ${admin}` };
    const body = json({ page: 1, perPage: 20 });
    const path = '/arcana.user.v1.UserService/ListUsers';
    const [overHttp1, overHttp2] = await Promise.all([raw.http1('POST', path, headers, body), raw.http2('POST', path, headers, body)]);
    const pages = [overHttp1, overHttp2].map((answer) => {
      expect({ status: answer.status, encoding: answer.headers.get('content-encoding') }).toEqual({ status: 200, encoding: 'gzip' });
      expect(Number(answer.headers.get('content-length'))).toBe(answer.body.byteLength);
      return JSON.parse(gunzipSync(answer.body).toString('utf8')) as { users: { id: string }[] };
    });
    expect(pages[0]?.users.length).toBeGreaterThan(0);
    expect(pages[1]).toEqual(pages[0]);
  });
});

describe('Connect JSON: unknown enum names and keys are refused, not dropped (defect 12)', () => {
  it('when ListUsers filters by the REST spelling GUEST or ListAuditEvents by USER_DELETED, then invalid_argument naming the field, not every row', async () => {
    const post = (procedure: string, body: unknown) => raw.rpc('connect-json', procedure, json(body), { token: admin });
    const [role, type, status] = await Promise.all([
      post('arcana.user.v1.UserService/ListUsers', { role: 'GUEST' }),
      post('arcana.audit.v1.AuditService/ListAuditEvents', { type: 'USER_DELETED' }),
      post('arcana.user.v1.UserService/ListUsers', { status: 'BANNED', perPage: 5 }),
    ]);
    expect([role, type, status].map((answer) => ({ code: answer.code, fields: Object.keys(answer.violations) }))).toEqual([
      { code: 'invalid_argument', fields: ['role'] },
      { code: 'invalid_argument', fields: ['type'] },
      { code: 'invalid_argument', fields: ['status'] },
    ]);
    // The proto spelling still works, and filters.
    const guests = await post('arcana.user.v1.UserService/ListUsers', { role: 'USER_ROLE_GUEST' });
    expect(guests.code).toBe('ok');
  });

  it('when an integer comes as a string in another spelling than decimal, in parallel over Connect and gRPC-Web JSON, then invalid_argument naming it; decimal strings still work', async () => {
    // protobuf-es reads such strings with Number(): "0x2" and "+2" were user 2, as `/users/0x2`
    // was over REST before it was refused there.
    const { id } = await register(t, newUser('spelling'));
    const spellings = [`0x${id.toString(16)}`, `0b${id.toString(2)}`, `0o${id.toString(8)}`, `+${id}`, ` ${id}`, `${id}n`];
    const refused = await Promise.all(
      spellings.flatMap((userId) => [
        raw.rpc('connect-json', 'arcana.user.v1.UserService/GetUser', json({ userId }), { token: admin }),
        raw.rpc('grpc-web', 'arcana.user.v1.UserService/GetUser', json({ userId }), { token: admin, headers: { 'content-type': 'application/grpc-web+json' } }),
      ]),
    );
    for (const answer of refused) expect({ code: answer.code, fields: Object.keys(answer.violations) }).toEqual({ code: 'invalid_argument', fields: ['user_id'] });
    const page = await raw.rpc('connect-json', 'arcana.user.v1.UserService/ListUsers', json({ page: '0x1', perPage: 5 }), { token: admin });
    expect({ code: page.code, fields: Object.keys(page.violations) }).toEqual({ code: 'invalid_argument', fields: ['page'] });
    for (const userId of [String(id), `${id}e0`, id]) {
      expect((await raw.rpc('connect-json', 'arcana.user.v1.UserService/GetUser', json({ userId }), { token: admin })).code).toBe('ok');
    }
  });

  it('when a request carries a key or a field number its message does not declare, then invalid_argument naming it and nothing is stored', async () => {
    const user = newUser('unknown');
    const [jsonKey, grpcJson, nested] = await Promise.all([
      raw.rpc('connect-json', 'arcana.auth.v1.AuthService/Register', json({ ...user, role: 'USER_ROLE_ADMIN' })),
      raw.rpc('grpc-web', 'arcana.user.v1.UserService/ListUsers', json({ rolez: 'USER_ROLE_GUEST' }), { token: admin, headers: { 'content-type': 'application/grpc-web+json' } }),
      raw.rpc('connect-json', 'arcana.user.v1.UserService/ListUsers', json({ perPage: 5, filter: { role: 'GUEST' } }), { token: admin }),
    ]);
    expect([jsonKey, grpcJson, nested].map((answer) => ({ code: answer.code, fields: Object.keys(answer.violations) }))).toEqual([
      { code: 'invalid_argument', fields: ['role'] },
      { code: 'invalid_argument', fields: ['rolez'] },
      { code: 'invalid_argument', fields: ['filter'] },
    ]);
    expect(await usersNamed(user.username)).toBe('0');

    // Binary: a field number ListUsersRequest does not have (99, a varint), appended to a valid request.
    const unknown = new BinaryWriter().tag(99, WireType.Varint).int32(3).finish();
    const listing = concat(binary(ListUsersRequestSchema, { page: 1, perPage: 5 }), unknown);
    const victim = await register(t, newUser('unknown'));
    const update = concat(binary(UpdateUserRequestSchema, { userId: victim.id, firstName: 'Ada' }), unknown);
    for (const protocol of ['connect-binary', 'grpc-web', 'grpc'] as const) {
      const [list, change] = await Promise.all([
        raw.rpc(protocol, 'arcana.user.v1.UserService/ListUsers', listing, { token: admin }),
        raw.rpc(protocol, 'arcana.user.v1.UserService/UpdateUser', update, { token: admin }),
      ]);
      expect({ protocol, list: { code: list.code, fields: Object.keys(list.violations) }, change: change.code }).toEqual({
        protocol,
        list: { code: 'invalid_argument', fields: ['99'] },
        change: 'invalid_argument',
      });
    }
    expect((await profileOf(victim.id))?.first_name).toBeNull();
  });

  it('when a binary request carries an undeclared field, then it is refused naming it before the rest is parsed, in parallel over every binary protocol: a tiny message inflating to 49,500 of them, and one ahead of bytes that do not parse', async () => {
    // Found by an attacker (helper 202): protobuf-es keeps every unknown field as an object, and
    // the edge named them only once the whole message was parsed. 20 bytes of Brotli inflating to
    // 49,500 empty fields cost ~100 ms of CPU and ~20 MB of heap per call (2.5 GB for 100 at once,
    // through health checks, which no rate limit covers). Now the read stops at the first.
    const field3 = new BinaryWriter().tag(3, WireType.LengthDelimited).bytes(new Uint8Array()).finish();
    const field99 = new BinaryWriter().tag(99, WireType.LengthDelimited).bytes(new Uint8Array()).finish();
    const many = concat(...Array.from({ length: 49_500 }, () => field3));
    // An unknown field, then a string field that claims more bytes than follow: the parser would
    // refuse this as malformed, so a refusal naming field 99 was made before it parsed.
    const ahead = concat(field99, Uint8Array.of(0x0a, 0x7f, 0x61));
    const calls = (['connect-binary', 'grpc-web', 'grpc'] as const).flatMap((protocol) => [
      raw.rpc(protocol, 'arcana.auth.v1.AuthService/Login', many, { compression: 'br' }).then((answer) => ({ protocol, body: 'many', answer })),
      raw.rpc(protocol, 'arcana.auth.v1.AuthService/Login', ahead).then((answer) => ({ protocol, body: 'ahead', answer })),
      raw.rpc(protocol, 'grpc.health.v1.Health/Check', ahead).then((answer) => ({ protocol, body: 'ahead of a health check', answer })),
    ]);
    for (const { protocol, body, answer } of await Promise.all(calls)) {
      expect({ protocol, body, code: answer.code, fields: Object.keys(answer.violations) }).toEqual({
        protocol,
        body,
        code: 'invalid_argument',
        fields: [body === 'many' ? '3' : '99'],
      });
    }
  });

  it('when a binary request sends a declared field with another wire type, in parallel over every binary protocol, then invalid_argument and nothing is read or stored', async () => {
    // Found by an attacker (helper 86): protobuf-es read a declared field as its declared type
    // whatever wire type it came with. UpdateUser's first_name (3, a string) sent as a VARINT was
    // stored as "W"; GetUser's user_id (1, a varint) sent as a FIXED32 read another number. Other
    // parsers skip such a field, so a proxy in front and this server read different messages.
    const victim = await register(t, newUser('wiretype'));
    // first_name with a VARINT tag (0x18), then what protobuf-es took for a length and a string.
    const update = concat(binary(UpdateUserRequestSchema, { userId: victim.id }), Uint8Array.of(0x18, 0x01, 0x57));
    // user_id with a group's start tag (0x0b), then a varint; per_page with a FIXED64 tag (0x11).
    const read = concat(Uint8Array.of(0x0b), new BinaryWriter().uint32(victim.id).finish());
    const list = concat(binary(ListUsersRequestSchema, { page: 1 }), Uint8Array.of(0x11, 0x05));
    const protocols = ['connect-binary', 'grpc-web', 'grpc'] as const;
    const answers = await Promise.all(
      protocols.flatMap((protocol) => [
        raw.rpc(protocol, 'arcana.user.v1.UserService/UpdateUser', update, { token: admin }).then((answer) => ({ protocol, call: 'update', code: answer.code })),
        raw.rpc(protocol, 'arcana.user.v1.UserService/GetUser', read, { token: admin }).then((answer) => ({ protocol, call: 'read', code: answer.code })),
        raw.rpc(protocol, 'arcana.user.v1.UserService/ListUsers', list, { token: admin }).then((answer) => ({ protocol, call: 'list', code: answer.code })),
      ]),
    );
    expect(answers).toEqual(protocols.flatMap((protocol) => ['update', 'read', 'list'].map((call) => ({ protocol, call, code: 'invalid_argument' }))));
    expect((await profileOf(victim.id))?.first_name).toBeNull();
    // The same field with its own wire type is read as before.
    const fine = concat(binary(UpdateUserRequestSchema, { userId: victim.id }), new BinaryWriter().tag(3, WireType.LengthDelimited).string('Ada').finish());
    expect((await raw.rpc('grpc', 'arcana.user.v1.UserService/UpdateUser', fine, { token: admin })).code).toBe('ok');
    expect((await profileOf(victim.id))?.first_name).toBe('Ada');
  });
});

describe('the server keeps serving', () => {
  it('when bytes the HTTP parser refuses arrive on many connections at once, then each gets its status in the error envelope and is closed, and the server answers the next request', async () => {
    const attacks: { name: string; bytes: string; status: number }[] = [
      { name: 'request line over 16 KiB', bytes: `GET /api/v1/users?q=${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, status: 431 },
      { name: 'one header over 16 KiB', bytes: `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`, status: 431 },
      { name: 'not HTTP at all', bytes: '\u0000\u0001\u0002 hello\r\n\r\n', status: 400 },
      { name: 'a space in a header name', bytes: 'GET /health HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n', status: 400 },
      { name: 'two content lengths', bytes: 'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}', status: 400 },
      { name: 'a bad chunk size', bytes: 'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n', status: 400 },
    ];
    const replies = await Promise.all(
      attacks.flatMap((attack) =>
        Array.from(
          { length: 4 },
          () =>
            new Promise<{ name: string; status: number; reply: string }>((resolve, reject) => {
              const socket = net.connect(t.port, '127.0.0.1', () => socket.write(attack.bytes));
              let received = '';
              socket.on('data', (chunk: Buffer) => (received += chunk.toString('utf8')));
              socket.on('close', () => resolve({ name: attack.name, status: attack.status, reply: received }));
              socket.on('error', (error: NodeJS.ErrnoException) =>
                error.code === 'ECONNRESET' ? resolve({ name: attack.name, status: attack.status, reply: received }) : reject(error),
              );
            }),
        ),
      ),
    );
    for (const { name, status, reply } of replies) {
      const [head = '', body = ''] = reply.split('\r\n\r\n');
      expect([name, head.split('\r\n')[0]]).toEqual([name, expect.stringMatching(new RegExp(`^HTTP/1\\.1 ${status} `))]);
      expect(head.toLowerCase()).toContain('content-type: application/json');
      expect(head.toLowerCase()).toContain('connection: close');
      const envelope = JSON.parse(body) as { success: boolean; error: { code: string; message: string }; requestId: string; timestamp: string };
      expect(envelope).toMatchObject({ success: false, error: { code: status === 413 ? 'PAYLOAD_TOO_LARGE' : 'VALIDATION_ERROR', message: expect.any(String) } });
      expect(head).toContain(`X-Request-Id: ${envelope.requestId}`);
    }
    expect((await raw.rest('GET', '/health')).status).toBe(200);
  });
});

/** The parts of an answer every refusal is judged by. */
function pick(answer: RawAnswer) {
  return { code: answer.code, status: answer.status, wellFormed: answer.wellFormed };
}

/** A gzip body missing its last bytes. */
function gzipCut(body: Uint8Array): Uint8Array {
  const compressed = gzipSync(body);
  return new Uint8Array(compressed.subarray(0, compressed.length - 6));
}

/** Rewrites an envelope's length to what it now holds, so only the compressed data is cut short. */
function fixEnvelope(body: Uint8Array): Uint8Array {
  const fixed = new Uint8Array(body);
  new DataView(fixed.buffer).setUint32(1, fixed.length - 5);
  return fixed;
}

describe("a unary call's deadline covers the reading of its body (helper 206)", () => {
  const LOGIN = '/arcana.auth.v1.AuthService/Login';
  const message = binary(LoginRequestSchema, { usernameOrEmail: 'nobody', password: 'irrelevant' });
  /** An envelope that promises more bytes than it carries: the body never ends. */
  const unfinished = encodeEnvelope(0, message).subarray(0, 8);

  it('when gRPC and Connect calls with a 300 ms deadline send part of their body and stall, over h2c and HTTP/1.1, at once, then each ends deadline_exceeded then, not at the request timeout', async () => {
    const overHttp2 = (protocol: 'grpc' | 'connect') =>
      new Promise<{ code: string; ms: number }>((resolve) => {
        const session = http2.connect(t.baseUrl);
        session.on('error', () => undefined);
        const headers =
          protocol === 'grpc'
            ? { 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '300m' }
            : { 'content-type': 'application/proto', 'connect-timeout-ms': '300' };
        const started = performance.now();
        const stream = session.request({ ':method': 'POST', ':path': LOGIN, ...headers, ...(protocol === 'connect' ? { 'content-length': '100' } : {}) });
        const answered = (code: string) => {
          resolve({ code, ms: performance.now() - started });
          session.destroy();
        };
        // A gRPC status comes in the trailers (or a trailers-only answer); Connect's in the status line.
        stream.on('response', (answer) => {
          if (protocol === 'connect' || answer['grpc-status'] !== undefined) answered(String(answer['grpc-status'] ?? answer[':status']));
        });
        stream.on('trailers', (trailers) => answered(String(trailers['grpc-status'])));
        stream.on('error', () => undefined);
        stream.on('close', () => answered('closed'));
        stream.resume();
        stream.write(protocol === 'grpc' ? unfinished : message.subarray(0, 4));
      });
    const overHttp1 = () =>
      new Promise<{ code: string; ms: number }>((resolve) => {
        const started = performance.now();
        const socket = net.connect(t.port, '127.0.0.1', () =>
          socket.write(`POST ${LOGIN} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/proto\r\nConnect-Timeout-Ms: 300\r\nContent-Length: 100\r\n\r\n`),
        );
        let answer = '';
        socket.on('data', (chunk: Buffer) => {
          answer += chunk.toString('latin1');
          const status = /^HTTP\/1\.1 (\d+)/.exec(answer)?.[1];
          if (status !== undefined) {
            socket.destroy();
            resolve({ code: status, ms: performance.now() - started });
          }
        });
        socket.on('error', () => undefined);
      });
    const [grpc, connect, http1] = await Promise.all([overHttp2('grpc'), overHttp2('connect'), overHttp1()]);
    // gRPC's deadline_exceeded is status 4; Connect's is HTTP 504.
    expect([grpc.code, connect.code, http1.code]).toEqual(['4', '504', '504']);
    // Well before the request timeout (60 s) and the stream sweep (30 s here), with room for a busy CI machine.
    for (const { ms } of [grpc, connect, http1]) expect(ms).toBeLessThan(10_000);
  });
});

describe('the discovery services (reflection, health) against hostile clients', () => {
  const REFLECTION = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo';
  /** The gRPC statuses these tests may meet, by Connect's names. */
  const GRPC_STATUS_NAMES: Record<string, string> = { '0': 'ok', '2': 'unknown', '3': 'invalid_argument', '8': 'resource_exhausted', '13': 'internal' };
  const listServices = binary(ServerReflectionRequestSchema, { messageRequest: { case: 'listServices', value: '*' } });

  /** The messages of a stream's body: [flags, bytes] per envelope. */
  const envelopes = (body: Uint8Array): [number, Uint8Array][] => {
    const found: [number, Uint8Array][] = [];
    for (let offset = 0; offset + 5 <= body.length;) {
      const length = new DataView(body.buffer, body.byteOffset + offset + 1, 4).getUint32(0);
      found.push([body[offset] ?? 0, body.subarray(offset + 5, offset + 5 + length)]);
      offset += 5 + length;
    }
    return found;
  };

  /** One reflection stream of `body` (envelopes) over gRPC or Connect streaming: its code, message and answers. */
  const reflect = async (protocol: 'grpc' | 'connect', body: Uint8Array, requestId: string, encoding?: 'gzip') => {
    const headers: Record<string, string> = protocol === 'grpc' ? { 'content-type': 'application/grpc', te: 'trailers' } : { 'content-type': 'application/connect+proto' };
    if (encoding !== undefined) headers[protocol === 'grpc' ? 'grpc-encoding' : 'connect-content-encoding'] = encoding;
    const result = await raw.http2('POST', REFLECTION, { ...headers, 'x-request-id': requestId }, body);
    const messages = envelopes(result.body);
    if (protocol === 'grpc') {
      const status = result.trailers.get('grpc-status') ?? result.headers.get('grpc-status');
      return {
        code: GRPC_STATUS_NAMES[status ?? ''] ?? `grpc-status ${status ?? 'missing'}`,
        message: decodeURIComponent(result.trailers.get('grpc-message') ?? result.headers.get('grpc-message') ?? ''),
        answers: messages.length,
      };
    }
    // Connect streaming ends with an end-of-stream message (flag 2) holding the error, if any.
    const end = messages.find(([flags]) => (flags & 2) === 2);
    const error = (end === undefined ? {} : (JSON.parse(new TextDecoder().decode(end[1])) as { error?: { code: string; message: string } })).error;
    return { code: error?.code ?? 'ok', message: error?.message ?? '', answers: messages.length - 1 };
  };

  it('when reflection streams carry what is no request (cut short, not protobuf, bad UTF-8, compressed without an encoding), at once over gRPC and Connect, then each is invalid_argument with a fixed text, and logged so', async () => {
    const badUtf8 = rawField(ServerReflectionRequestSchema, 'file_by_filename', new Uint8Array([0x61, 0xc3, 0x28]));
    const bodies: Record<string, Uint8Array> = {
      'cut short': encodeEnvelope(0, new Uint8Array([0xff])),
      'bad UTF-8': encodeEnvelope(0, badUtf8),
      'compressed, no encoding': encodeEnvelope(1, listServices),
      'a good request, then garbage': concat(encodeEnvelope(0, listServices), encodeEnvelope(0, new Uint8Array([0x0a, 0x7f]))),
    };
    const cases = (['grpc', 'connect'] as const).flatMap((protocol) =>
      Object.entries(bodies).map(([name, body]) => ({ protocol, name, body, id: `reflect-bad-${protocol}-${name.replace(/\W+/g, '-')}` })),
    );
    const outcomes = await Promise.all(cases.map(async ({ protocol, body, id }) => reflect(protocol, body, id)));
    expect(outcomes.map(({ code, message }) => `${code}: ${message}`)).toEqual(cases.map(() => 'invalid_argument: a reflection request could not be read'));
    // The good request before the garbage was answered.
    expect(outcomes.map((outcome) => outcome.answers)).toEqual(cases.map(({ name }) => (name === 'a good request, then garbage' ? 1 : 0)));
    // The log names codes as the rest of the RPC log does (Code's names, lower-cased).
    for (const { id } of cases) expect(linesOf(id).map((line) => line.code)).toEqual(['invalidargument']);
  });

  it('when reflection requests are large once inflated (a 100 KB host, or 20 000 undeclared fields, in a few hundred bytes of gzip), at once over gRPC and Connect, then resource_exhausted before any answer', async () => {
    // Helper 206: every answer repeats its request and host, so a stream of 200 such requests
    // sent 7 KB and got 41 MB back; and 51 000 undeclared fields were all parsed before refused.
    const bigHost = compress(binary(ServerReflectionRequestSchema, { host: 'h'.repeat(100_000), messageRequest: { case: 'listServices', value: '*' } }), 'gzip');
    const undeclared = compress(concat(listServices, ...Array.from({ length: 20_000 }, () => new Uint8Array([0xf8, 0x3e, 0x00]))), 'gzip');
    const outcomes = await Promise.all(
      (['grpc', 'connect'] as const).flatMap((protocol) => [
        reflect(protocol, encodeEnvelope(1, bigHost), `reflect-big-${protocol}`, 'gzip'),
        reflect(protocol, encodeEnvelope(1, undeclared), `reflect-undeclared-${protocol}`, 'gzip'),
      ]),
    );
    for (const outcome of outcomes) expect(outcome).toMatchObject({ code: 'resource_exhausted', answers: 0 });
    // A host of a few hundred bytes is still an ordinary request, answered.
    const host = binary(ServerReflectionRequestSchema, { host: 'h'.repeat(300), messageRequest: { case: 'listServices', value: '*' } });
    expect(await reflect('grpc', encodeEnvelope(0, host), 'reflect-host-grpc')).toMatchObject({ code: 'ok', answers: 1 });
  });

  it('when one reflection stream asks more questions than one call may, then the first are answered and the stream ends resource_exhausted', async () => {
    const body = concat(...Array.from({ length: REFLECTION_REQUESTS_PER_STREAM + 50 }, () => encodeEnvelope(0, listServices)));
    const [grpc, connect] = await Promise.all([reflect('grpc', body, 'reflect-many-grpc'), reflect('connect', body, 'reflect-many-connect')]);
    for (const outcome of [grpc, connect]) expect(outcome).toMatchObject({ code: 'resource_exhausted', answers: REFLECTION_REQUESTS_PER_STREAM });
    expect(linesOf('reflect-many-grpc').map((line) => line.code)).toEqual(['resourceexhausted']);
    // A well-behaved client's stream is logged when it ends, as ok.
    expect(await reflect('grpc', encodeEnvelope(0, listServices), 'reflect-one')).toMatchObject({ code: 'ok', answers: 1 });
    expect(linesOf('reflect-one').map((line) => line.code)).toEqual(['ok']);
  });

  /** A gRPC stream over h2c that stays open on the client's side: its status, once it ends. */
  const openStream = (path: string, requestId: string, headers: Record<string, string>, first: Uint8Array) => {
    const session = http2.connect(t.baseUrl);
    session.on('error', () => undefined);
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', 'x-request-id': requestId, ...headers });
    const started = performance.now();
    const status = new Promise<{ status: string; ms: number }>((resolve) => {
      stream.on('trailers', (trailers) => resolve({ status: String(trailers['grpc-status']), ms: performance.now() - started }));
      stream.on('close', () => resolve({ status: 'closed', ms: performance.now() - started }));
    });
    stream.on('error', () => undefined);
    stream.write(encodeEnvelope(0, first));
    return { session, stream, status };
  };

  it('when a reflection stream and a health watch carry a 300 ms deadline and their client sends nothing more, then both end deadline_exceeded then, and are logged so', async () => {
    const reflection = openStream(REFLECTION, 'stream-deadline-reflect', { 'grpc-timeout': '300m' }, listServices);
    const watch = openStream('/grpc.health.v1.Health/Watch', 'stream-deadline-watch', { 'grpc-timeout': '300m' }, binary(HealthCheckRequestSchema, { service: '' }));
    watch.stream.end();
    reflection.stream.resume();
    watch.stream.resume();
    try {
      const [reflected, watched] = await Promise.all([reflection.status, watch.status]);
      // Reflection kept such a stream open past its deadline; the watch ended it as a success.
      expect([reflected.status, watched.status]).toEqual([String(4), String(4)]);
      expect(Math.max(reflected.ms, watched.ms)).toBeLessThan(3_000);
      expect(linesOf('stream-deadline-reflect').map((line) => line.code)).toEqual(['deadlineexceeded']);
      expect(linesOf('stream-deadline-watch').map((line) => line.code)).toEqual(['deadlineexceeded']);
    } finally {
      reflection.session.destroy();
      watch.session.destroy();
    }
  });

  it('when clients reset reflection streams with answers unread, in parallel, then each is logged canceled at info, never as a server error', async () => {
    const symbols = Array.from({ length: 150 }, () =>
      encodeEnvelope(0, binary(ServerReflectionRequestSchema, { messageRequest: { case: 'fileContainingSymbol', value: 'arcana.user.v1.UserService' } })),
    );
    const ids = Array.from({ length: 4 }, (_, index) => `stream-reset-${index}`);
    await Promise.all(
      ids.map(async (id, index) => {
        const { session, stream, status } = openStream(REFLECTION, id, {}, listServices);
        stream.pause();
        stream.write(concat(...symbols));
        // Reset once the server is answering, so that the call is under way: after a fixed 150 ms,
        // a loaded CI machine had not yet started one, which then was never a call to log.
        await Promise.race([new Promise((resolve) => stream.once('response', resolve)), new Promise((resolve) => setTimeout(resolve, 3_000))]);
        await new Promise((resolve) => setTimeout(resolve, 50));
        if (index % 2 === 0) stream.close(http2.constants.NGHTTP2_CANCEL);
        else session.destroy();
        await status;
        session.destroy();
      }),
    );
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline && ids.some((id) => linesOf(id).length === 0)) await new Promise((resolve) => setTimeout(resolve, 50));
    for (const id of ids) expect({ id, lines: linesOf(id).map((line) => [line.level, line.code]) }).toEqual({ id, lines: [['info', 'canceled']] });
  });

  it('when Health/Check names a service of 3,000 or 60,000 characters, over every protocol, then not_found or resource_exhausted, without the name repeated in the answer', async () => {
    const check = (service: string) =>
      Promise.all(
        RPC_PROTOCOLS.map((protocol) =>
          raw.rpc(protocol, 'grpc.health.v1.Health/Check', protocol === 'connect-json' ? json({ service }) : binary(HealthCheckRequestSchema, { service })),
        ),
      );
    const [long, huge] = await Promise.all([check('x'.repeat(3_000)), check('x'.repeat(60_000))]);
    expect(long.map((outcome) => `${outcome.code}: ${outcome.message}`)).toEqual(RPC_PROTOCOLS.map(() => 'not_found: unknown service (not a service name)'));
    // Over the 4 KiB a health check may send (HEALTH_READ_MAX_BYTES): refused before it is read.
    expect(huge.map((outcome) => ({ code: outcome.code, echoed: outcome.message.includes('xxx') }))).toEqual(
      RPC_PROTOCOLS.map(() => ({ code: 'resource_exhausted', echoed: false })),
    );
    const named = await raw.rpc('grpc', 'grpc.health.v1.Health/Check', binary(HealthCheckRequestSchema, { service: 'no.such.Service' }));
    expect(named.message).toBe('unknown service "no.such.Service"');
  });
});

/** Sends raw bytes on a connection of their own and reads the answer until the server closes it. */
function exchange(bytes: Buffer | string): Promise<{ head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(t.port, '127.0.0.1', () => socket.end(bytes));
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    socket.on('close', () => {
      const split = received.indexOf('\r\n\r\n');
      resolve({ head: received.slice(0, split).toLowerCase(), body: received.slice(split + 4) });
    });
    socket.on('error', reject);
  });
}

const PATH = '/arcana.auth.v1.AuthService/GetCurrentUser';
const GET = `${PATH}?connect=v1&encoding=json&message=%7B%7D`;
const GRPC_WEB_EMPTY = Buffer.from([0, 0, 0, 0, 0]);

/** The Connect code a Connect answer carries, or the grpc-status of a gRPC-Web one; undefined for a bare answer. */
function codeOf(answer: { head: string; body: string }): string | undefined {
  // gRPC-Web: in the headers (trailers-only) or in the trailer frame of the body.
  const status = /\r\ngrpc-status: (\d+)/.exec(answer.head)?.[1] ?? /grpc-status: ?(\d+)/i.exec(answer.body)?.[1];
  if (status !== undefined) return `grpc-status ${status}`;
  try {
    return (JSON.parse(answer.body) as { code?: string }).code;
  } catch {
    return undefined;
  }
}

// An HTTP/1.0 request may omit Host, and one it carries was never checked. connect-node cannot form
// the URL of such a request, and answered it with a bare 400 (no body, no grpc-status, no request
// id, unlogged), which Connect and gRPC-Web clients read as internal, where REST serves the same
// request (helper 137; helper 69's defect, back through HTTP/1.0; the test here checked the status
// alone).
describe('an HTTP/1.0 RPC without a Host header, or with a malformed one', () => {
  const cases: [string, string | Buffer][] = [
    ['Connect JSON POST without Host', `POST ${PATH} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}`],
    ['Connect GET without Host', `GET ${GET} HTTP/1.0\r\n\r\n`],
    ['gRPC-Web without Host', Buffer.concat([Buffer.from(`POST ${PATH} HTTP/1.0\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: 5\r\n\r\n`), GRPC_WEB_EMPTY])],
    ['Connect GET with Host `[`', `GET ${GET} HTTP/1.0\r\nHost: [\r\n\r\n`],
    ['Connect GET with Host `a b`', `GET ${GET} HTTP/1.0\r\nHost: a b\r\n\r\n`],
  ];

  it.each(cases)('when it is a %s, then the answer is in its protocol, with a code and a request id, not a bare 400', async (_name, bytes) => {
    const answer = await exchange(bytes);
    expect(answer.head).toMatch(/^http\/1\.[01] \d{3} /);
    // gRPC-Web carries the request id with its status, in the trailer frame of a body.
    const requestId = answer.head.includes('\r\nx-request-id: ') || answer.body.includes('x-request-id:');
    expect({ code: codeOf(answer), requestId }).toEqual({ code: expect.any(String), requestId: true });
  });

  it('when REST gets the same request without Host, then it is served: RPC must not differ', async () => {
    const rest = await exchange('GET /api/v1/auth/me HTTP/1.0\r\n\r\n');
    expect(rest.head).toMatch(/^http\/1\.1 401 /);
    const rpc = await exchange(`GET ${GET} HTTP/1.0\r\n\r\n`);
    expect(rpc.head).toMatch(/^http\/1\.1 401 /);
  });
});
