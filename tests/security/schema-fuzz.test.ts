// Schema-driven fuzzing of the public API. Every REST operation in openapi.yaml and every unary
// RPC of the public services generated under gen/proto/arcana (not internal/) is found by reading
// the schemas and descriptors, so operations and fields added later are fuzzed without a change
// here. Each case starts from a valid request, built from the schemas (with the few seed values
// below that must mean something: an existing user, a live token), as the administrator, so that
// authorization does not cut the interesting paths short; then it makes one part hostile: a field
// (NUL and control characters, unpaired surrogates, huge and negative numbers, unknown enum
// names, wrong types, deep nesting), the shape (unknown and duplicate keys) or, on the wire, the
// body itself (cut short, garbled, compressed wrongly). The server must never answer 5xx or
// `internal`; answers must have their protocol's shape; what is certainly invalid must be refused
// as invalid_argument naming the field (REST: 400 VALIDATION_ERROR with `details`).
//
// Cases: FUZZ_RUNS in all (default 400), spread evenly over operation × protocol pairs.
// A failure prints fast-check's seed and path; replay it with FUZZ_SEED=… FUZZ_PATH=… and -t with
// the failing test's name.
//
// The edge is the controller layer, the same code in every topology: this file runs in the
// monolithic vitest project only.
import { create, toBinary, toJson, type DescField, type DescMessage, type DescMethod, type DescService, type JsonValue, type MessageInitShape } from '@bufbuild/protobuf';
import { reflect } from '@bufbuild/protobuf/reflect';
import { MethodOptions_IdempotencyLevel } from '@bufbuild/protobuf/wkt';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import fc from 'fast-check';
import { load as parseYaml } from 'js-yaml';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPENAPI_PATH } from '../../src/app.ts';
import { newUser, prismaRepositoriesOf, register, startTestServer, type TestServer } from '../helpers/test-app.ts';
import { RawClient, RPC_PROTOCOLS, type RawAnswer, type RpcProtocol } from './raw-protocols.ts';

const addFormats = addFormatsModule as unknown as typeof addFormatsModule.default;

const TOTAL_RUNS = Number(process.env.FUZZ_RUNS ?? 400);
const REPLAY = {
  ...(process.env.FUZZ_SEED === undefined ? {} : { seed: Number(process.env.FUZZ_SEED) }),
  ...(process.env.FUZZ_PATH === undefined ? {} : { path: process.env.FUZZ_PATH }),
};

// ------------------------------------------------------------------------------------ the API
type Schema = Record<string, unknown>;
interface OpenApiDocument {
  paths: Record<string, Record<string, unknown>>;
  components: { schemas: Record<string, Schema>; parameters: Record<string, { name: string; in: string; required?: boolean; schema: Schema }> };
}

const openapi = parseYaml(readFileSync(OPENAPI_PATH, 'utf8')) as OpenApiDocument;

/** A JSON Schema by its place in openapi.yaml, so that its `$ref`s resolve. */
interface SchemaAt {
  pointer: string;
  schema: Schema;
}

function at(pointer: string): SchemaAt {
  let node: unknown = openapi;
  for (const part of pointer.replace(/^#\//, '').split('/')) node = (node as Record<string, unknown>)[part.replaceAll('~1', '/').replaceAll('~0', '~')];
  const schema = node as Schema;
  return typeof schema.$ref === 'string' ? at(schema.$ref) : { pointer, schema };
}

const ajv = new Ajv2020({ allErrors: true, strict: false });
addFormats(ajv);
ajv.addSchema({ $id: 'openapi', components: openapi.components });
const validators = new Map<string, ValidateFunction>();
function validatorOf(place: SchemaAt): ValidateFunction {
  let validate = validators.get(place.pointer);
  if (validate === undefined) {
    validate = ajv.compile({ $ref: `openapi${place.pointer}` });
    validators.set(place.pointer, validate);
  }
  return validate;
}

interface RestParameter {
  name: string;
  in: 'path' | 'query';
  place: SchemaAt;
}

interface RestOperation {
  id: string;
  method: string;
  path: string;
  parameters: RestParameter[];
  body: SchemaAt | undefined;
}

function restOperations(): RestOperation[] {
  const operations: RestOperation[] = [];
  for (const [path, item] of Object.entries(openapi.paths)) {
    for (const method of ['get', 'post', 'put', 'patch', 'delete']) {
      const operation = item[method] as
        { operationId: string; parameters?: { $ref: string }[]; requestBody?: { content?: Record<string, { schema?: { $ref?: string } }> } } | undefined;
      if (operation === undefined) continue;
      const refs = [...((item.parameters as { $ref: string }[] | undefined) ?? []), ...(operation.parameters ?? [])];
      const parameters = refs.map((ref) => {
        const parameter = at(ref.$ref).schema as unknown as { name: string; in: 'path' | 'query' };
        return { name: parameter.name, in: parameter.in, place: at(`${ref.$ref}/schema`) };
      });
      const bodyRef = operation.requestBody?.content?.['application/json']?.schema?.$ref;
      operations.push({ id: operation.operationId, method: method.toUpperCase(), path, parameters, body: bodyRef === undefined ? undefined : at(bodyRef) });
    }
  }
  return operations;
}

/** The public services: every *_service_pb.js under gen/proto/arcana, the internal layers' aside. */
async function publicServices(): Promise<DescService[]> {
  const root = join(import.meta.dirname, '../../gen/proto/arcana');
  const files = readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('_service_pb.js') && !file.startsWith('internal'));
  const services: DescService[] = [];
  for (const file of files) {
    const module = (await import(pathToFileURL(join(root, file)).href)) as Record<string, unknown>;
    for (const value of Object.values(module)) {
      if (typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'service') services.push(value as DescService);
    }
  }
  return services;
}

const services = await publicServices();
const rpcMethods: DescMethod[] = services.flatMap((service) => service.methods.filter((method) => method.methodKind === 'unary'));

/**
 * Where the RPC validator finds a field's rule (see request-validator.ts): a property of the
 * schema named like the message, else a parameter named like the field (the last of a name wins).
 */
const parameterByName = new Map(Object.entries(openapi.components.parameters).map(([key, parameter]) => [parameter.name, key]));
function ruleOf(message: DescMessage, field: DescField): SchemaAt | undefined {
  const properties = openapi.components.schemas[message.name]?.properties as Record<string, unknown> | undefined;
  if (properties?.[field.jsonName] !== undefined) return at(`#/components/schemas/${message.name}/properties/${field.jsonName}`);
  const parameter = parameterByName.get(field.jsonName);
  return parameter === undefined ? undefined : at(`#/components/parameters/${parameter}/schema`);
}

// ------------------------------------------------------------------------------------ valid requests
interface CaseContext {
  admin: string;
  victim: { id: number; username: string; password: string; refreshToken: string };
  unique: string;
}

/** The only values chosen by hand: the ones that must name something that exists. */
const SEEDS: Record<string, (context: CaseContext) => string | number> = {
  userId: (context) => context.victim.id,
  refreshToken: (context) => context.victim.refreshToken,
  usernameOrEmail: (context) => context.victim.username,
  password: (context) => context.victim.password,
  oldPassword: (context) => context.victim.password,
};

/** Strings to try, in order, until one satisfies a string schema. */
const stringCandidates = (context: CaseContext) => [
  `fz${context.unique}`,
  `fz${context.unique}@example.com`,
  'https://example.com/avatar.png',
  'Passw0rd!',
  'Ada Lovelace',
  '+15550100',
];

/** A value the schema accepts; `undefined` when none of the simple candidates fits. */
function validValue(place: SchemaAt, name: string, context: CaseContext): unknown {
  const seed = SEEDS[name];
  if (seed !== undefined) return seed(context);
  const { schema } = place;
  if (Array.isArray(schema.enum)) return schema.enum[0];
  if (schema.const !== undefined) return schema.const;
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  if (type === 'integer' || type === 'number') return typeof schema.minimum === 'number' ? schema.minimum : 1;
  if (type === 'boolean') return true;
  if (type === 'object') {
    const properties = (schema.properties ?? {}) as Record<string, unknown>;
    return Object.fromEntries(Object.keys(properties).map((key) => [key, validValue(at(`${place.pointer}/properties/${key}`), key, context)]));
  }
  return stringCandidates(context).find((candidate) => validatorOf(place)(candidate));
}

/** A valid RPC request message, from the same rules the RPC validator applies. */
function validMessage(desc: DescMessage, context: CaseContext): MessageInitShape<DescMessage> {
  const init: Record<string, unknown> = {};
  for (const field of desc.fields) {
    const rule = ruleOf(desc, field);
    const value = SEEDS[field.jsonName]?.(context) ?? (rule === undefined ? undefined : validValue(rule, field.jsonName, context));
    if (field.fieldKind === 'enum') {
      const byName = field.enum.values.find((candidate) => candidate.localName === value || candidate.name === value);
      init[field.localName] = byName?.number ?? field.enum.values.find((candidate) => candidate.number !== 0)?.number ?? 0;
    } else if (field.fieldKind === 'scalar') {
      init[field.localName] = value ?? fallbackScalar(reflect(desc).get(field), context);
    }
  }
  return init;
}

/** A non-zero value of a scalar's type, for a field no rule describes. */
function fallbackScalar(zero: unknown, context: CaseContext): unknown {
  if (typeof zero === 'string') return `fz${context.unique}`;
  if (typeof zero === 'boolean') return true;
  if (typeof zero === 'bigint') return 1n;
  if (zero instanceof Uint8Array) return new Uint8Array([1]);
  return 1;
}

// ------------------------------------------------------------------------------------ hostile values
const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((unit) => String.fromCharCode(unit));
const controlCharacter = fc.oneof(fc.integer({ min: 0, max: 0x1f }), fc.integer({ min: 0x7f, max: 0x9f })).map((code) => String.fromCharCode(code));
const curated = fc.constantFrom(
  '\u0000',
  'a\u0000b',
  '\r\n',
  '\u2028',
  '\u2029',
  '\u202e',
  '\u2066',
  '\ufeff',
  'می\u200cخواهم',
  'क्\u200dष',
  '',
  ' ',
  '😀'.repeat(30),
  'é'.repeat(40),
  "'; DROP TABLE users;--",
  '%00',
  '../../etc/passwd',
  '${jndi:ldap://x}',
  '<script>alert(1)</script>',
  '\\',
  'null',
  'NaN',
  '-1',
  '0',
  '99999999999',
  '1.5',
  '1e400',
  'ADMIN',
  'GUEST',
  'USER_ROLE_ADMIN',
  'USER_STATUS_DELETED',
  'AUDIT_EVENT_TYPE_USER_DELETED',
  'javascript:alert(1)',
);
const hostileString = fc.oneof(
  curated,
  fc.tuple(fc.string({ maxLength: 6 }), fc.oneof(loneSurrogate, controlCharacter, curated), fc.string({ maxLength: 6 })).map((parts) => parts.join('')),
  fc.string({ unit: 'binary', maxLength: 30 }),
  fc.string({ unit: fc.oneof(loneSurrogate, controlCharacter, fc.constant('a')), maxLength: 8 }),
  fc.integer({ min: 60, max: 12_000 }).map((length) => 'x'.repeat(length)),
);
/**
 * Hostile text for a URL, short enough that the request line stays within Node's header limit
 * (16 KiB): a longer one is refused by the HTTP parser (431) before the application sees it.
 */
const hostileUrlText = hostileString.map((text) => text.slice(0, 600));
const hostileNumber = fc.oneof(
  fc.constantFrom(0, -1, 1.5, -0.5, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), -(2 ** 31) - 1, 2 ** 53 + 2, 1e308, -1e308),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
);

const hostileInt32 = fc.oneof(fc.constantFrom(0, -1, 1, 2 ** 31 - 1, -(2 ** 31), 99_999), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));

/** Nested arrays or objects, deeper than any request has a reason to be. */
const deepValue = fc.tuple(fc.integer({ min: 20, max: 1500 }), fc.boolean()).map(([depth, arrays]) => {
  let value: JsonValue = 1;
  for (let level = 0; level < depth; level += 1) value = arrays ? [value] : { a: value };
  return value;
});
const wrongShape: fc.Arbitrary<JsonValue> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.constant<JsonValue>([]),
  fc.constant<JsonValue>({}),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 4 }), fc.integer(), { maxKeys: 3 }),
  deepValue,
);
const hostileJson: fc.Arbitrary<JsonValue> = fc.oneof({ weight: 4, arbitrary: hostileString }, { weight: 2, arbitrary: hostileNumber }, { weight: 2, arbitrary: wrongShape });

/** A key no request declares. */
const unknownKey = fc.oneof(
  fc.constantFrom('admin', 'isAdmin', 'role', '__proto__', 'constructor', '$where', 'user_id_', '\u0000', 'a\ud800'),
  fc.string({ minLength: 1, maxLength: 8 }).map((key) => `x_${key}`),
);

type Compression = 'gzip-cut' | 'brotli-garbage' | 'named-gzip-sent-plain' | 'flag-without-encoding' | 'unsupported-encoding';
const compression = fc.constantFrom<Compression>('gzip-cut', 'brotli-garbage', 'named-gzip-sent-plain', 'flag-without-encoding', 'unsupported-encoding');

/** What a case changes in an otherwise valid request. */
type Mutation =
  | { kind: 'value'; target: string; value: JsonValue }
  | { kind: 'unknown-key'; key: string; value: JsonValue }
  | { kind: 'duplicate-key'; target: string; value: JsonValue }
  | { kind: 'truncate'; keep: number }
  | { kind: 'garble'; at: number[]; xor: number }
  | { kind: 'compress'; how: Compression }
  | { kind: 'raw-field'; number: number; wireType: WireType; payload: Uint8Array }
  | { kind: 'query'; target: string; values: string[] }
  | { kind: 'path'; target: string; value: string }
  | { kind: 'none' };

const wireTamper = fc.oneof(
  fc.record({ kind: fc.constant<'truncate'>('truncate'), keep: fc.double({ min: 0, max: 0.999, noNaN: true }) }),
  fc.record({
    kind: fc.constant<'garble'>('garble'),
    at: fc.array(fc.double({ min: 0, max: 0.999, noNaN: true }), { minLength: 1, maxLength: 4 }),
    xor: fc.integer({ min: 1, max: 255 }),
  }),
  fc.record({ kind: fc.constant<'compress'>('compress'), how: compression }),
);

// ------------------------------------------------------------------------------------ the oracle
/** What a case may be answered. `field`: the name the answer must give when the request is refused. */
interface Verdict {
  /** Certainly invalid: the answer must be invalid_argument (REST: 400 VALIDATION_ERROR). */
  invalid: boolean;
  /** A field-level change to a decodable request: a refusal must name this field. */
  field?: string;
  /** The code expected instead of invalid_argument (an unsupported encoding is `unimplemented`). */
  code?: string;
  /** The untouched starting request: it must pass validation, or the cases built on it test little. */
  valid?: boolean;
}

const storable = (text: string) => !text.includes('\u0000') && text.isWellFormed();
/** How the server names a key it refuses: as sent, or JSON-quoted when it is not storable text. */
const keyName = (key: string) => (storable(key) ? key : JSON.stringify(key));

/**
 * Whether a refusal names the field: itself, a path below it, or the whole request. REST writes
 * body paths with dots (a key's own slashes too), and reads `a[b]` in a query as `a` (qs syntax).
 */
function namesField(violations: Record<string, string>, field: string, rest: boolean): boolean {
  const names = rest ? [field, field.replaceAll('/', '.'), field.split('[')[0] ?? field] : [field];
  return Object.keys(violations).some(
    (key) => key === 'request' || key === 'body' || names.some((name) => key === name || key.startsWith(`${name}.`) || key.startsWith(`${name}[`)),
  );
}

function judge(answer: RawAnswer, verdict: Verdict, label: string, rest: boolean): void {
  const seen = JSON.stringify({ label, code: answer.code, status: answer.status, message: answer.message, violations: answer.violations });
  // RPC statuses follow the code (Connect answers `unimplemented` with 501): the code is judged.
  expect(!['internal', 'unknown', 'data_loss'].includes(answer.code) && (!rest || answer.status < 500), seen).toBe(true);
  expect(answer.wellFormed, seen).toBe(true);
  if (verdict.code !== undefined) expect(answer.code, seen).toBe(verdict.code);
  else if (verdict.invalid) expect(answer.code, seen).toBe('invalid_argument');
  if (verdict.valid === true) expect(answer.code, seen).not.toBe('invalid_argument');
  if (answer.code === 'invalid_argument' && verdict.field !== undefined) {
    expect(namesField(answer.violations, verdict.field, rest), `${seen} should name ${verdict.field}`).toBe(true);
  }
}

// ------------------------------------------------------------------------------------ wire helpers
const encoder = new TextEncoder();
const bytesOf = (text: string) => encoder.encode(text);

function tamper(bytes: Uint8Array, mutation: Extract<Mutation, { kind: 'truncate' | 'garble' }>): Uint8Array {
  if (mutation.kind === 'truncate') return bytes.subarray(0, Math.floor(bytes.length * mutation.keep));
  const garbled = new Uint8Array(bytes);
  for (const where of mutation.at) {
    const index = Math.floor(garbled.length * where);
    garbled[index] = (garbled[index] ?? 0) ^ mutation.xor;
  }
  return garbled;
}

/** JSON text with `key` written twice: first `value`, then what `body` holds. */
function withDuplicate(body: Record<string, JsonValue>, key: string, value: JsonValue): string {
  const rest = JSON.stringify(body);
  return `{${JSON.stringify(key)}:${JSON.stringify(value)}${rest === '{}' ? '}' : `,${rest.slice(1)}`}`;
}

/** How a compression case is sent over the RPC protocols, and what it must be answered. */
function rpcCompression(how: Compression, protocol: RpcProtocol): { options: Parameters<RawClient['rpc']>[3]; payload?: Uint8Array; code?: string } {
  const enveloped = protocol === 'grpc' || protocol === 'grpc-web';
  const cut = (body: Uint8Array) => {
    const shorter = body.subarray(0, Math.max(enveloped ? 6 : 1, body.length - 4));
    if (!enveloped) return shorter;
    const fixed = new Uint8Array(shorter);
    new DataView(fixed.buffer).setUint32(1, fixed.length - 5);
    return fixed;
  };
  switch (how) {
    case 'gzip-cut':
      return { options: { compression: 'gzip', frame: cut } };
    case 'brotli-garbage':
      return { options: { declaredEncoding: 'br', compressedFlag: 1 }, payload: new Uint8Array([0x0b, 0xff, 0x00, 0x61, 0x7a]) };
    case 'named-gzip-sent-plain':
      return { options: { declaredEncoding: 'gzip', compressedFlag: 1 } };
    case 'flag-without-encoding':
      // The Connect protocol has no per-message flag: there it names gzip and sends garbage.
      return enveloped ? { options: { compressedFlag: 1 } } : { options: { declaredEncoding: 'gzip' }, payload: new Uint8Array([0x1f, 0x8b, 0x08, 0x00, 0x01]) };
    case 'unsupported-encoding':
      return { options: { declaredEncoding: 'snappy', compressedFlag: 1 }, code: 'unimplemented' };
  }
}

// ------------------------------------------------------------------------------------ the suite
let t: TestServer;
let raw: RawClient;
let caseNumber = 0;

beforeAll(async () => {
  t = await startTestServer({
    // Fuzzed logins fail often, for fresh accounts; the lockout rules are tested elsewhere.
    LOGIN_MAX_FAILURES: '1000',
    LOGIN_ACCOUNT_RATE_LIMIT_MAX: '1000000',
  });
  raw = new RawClient(t.baseUrl);
});

afterAll(async () => {
  raw.close();
  await t.close();
});

/**
 * An administrator session for the next case. A case may revoke the session it ran in or (an id
 * is a field like any other) suspend or delete any account, its administrator's too; a session
 * that no longer reads its own profile as an ADMIN is replaced by a new administrator, registered
 * and promoted in the database, which needs no surviving one.
 */
let adminToken: string | undefined;
async function adminSession(): Promise<string> {
  if (adminToken !== undefined) {
    const me = await t.request.get('/api/v1/auth/me').set('authorization', `Bearer ${adminToken}`);
    if (me.status === 200 && me.body.data.role === 'ADMIN') return adminToken;
  }
  const credentials = newUser(`fza${caseNumber}`);
  // Promoted in the database, behind the API and its caches: no administrator may be left to do it.
  const registered = await register(t, credentials);
  await prismaRepositoriesOf(t).users.update(registered.id, { role: 'ADMIN' }, {});
  const login = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: credentials.username, password: credentials.password });
  if (login.status !== 200) throw new Error(`fuzz admin login failed: ${login.status} ${JSON.stringify(login.body)}`);
  adminToken = login.body.data.tokens.accessToken as string;
  return adminToken;
}

/** A case's administrator and, when its request names one, a fresh victim account. */
async function freshContext(needsVictim: boolean): Promise<CaseContext> {
  caseNumber += 1;
  const unique = `${process.pid}x${caseNumber}`;
  const admin = await adminSession();
  const victim = needsVictim ? await register(t, newUser(`fzv${caseNumber}`)) : { id: 0, username: 'unused', password: 'unused', refreshToken: 'unused' };
  return { admin, victim, unique };
}

const restOps = restOperations();
const pairs = restOps.length + rpcMethods.length * RPC_PROTOCOLS.length;
const runsPerPair = Math.max(1, Math.ceil(TOTAL_RUNS / pairs));
const settings = { numRuns: runsPerPair, ...REPLAY };

it('when the schemas and descriptors are read, then every REST operation and every public RPC is found, and no internal one', () => {
  expect(restOps.length).toBeGreaterThan(0);
  expect(services.map((service) => service.typeName).sort()).toEqual(
    expect.arrayContaining(['arcana.audit.v1.AuditService', 'arcana.auth.v1.AuthService', 'arcana.user.v1.UserService']),
  );
  expect(services.some((service) => service.typeName.includes('.internal.'))).toBe(false);
});

describe('REST: one hostile part in an otherwise valid request', () => {
  it.each(restOps.map((operation) => [`${operation.method} ${operation.path}`, operation] as const))(
    'when %s is fuzzed, then no 5xx, always the envelope, and what is invalid is a 400 naming the field',
    async (_name, operation) => {
      const bodyKeys = Object.keys(operation.body?.schema.properties ?? {});
      const queryParams = operation.parameters.filter((parameter) => parameter.in === 'query');
      const pathParams = operation.parameters.filter((parameter) => parameter.in === 'path');
      const choices: fc.Arbitrary<Mutation>[] = [
        wireTamper,
        fc.record({ kind: fc.constant<'query'>('query'), target: unknownKey, values: fc.array(hostileUrlText, { minLength: 1, maxLength: 2 }) }),
      ];
      if (bodyKeys.length > 0) {
        choices.push(
          fc.record({ kind: fc.constant<'value'>('value'), target: fc.constantFrom(...bodyKeys), value: hostileJson }),
          fc.record({ kind: fc.constant<'value'>('value'), target: fc.constantFrom(...bodyKeys), value: hostileJson }),
          fc.record({ kind: fc.constant<'unknown-key'>('unknown-key'), key: unknownKey, value: hostileJson }),
          fc.record({ kind: fc.constant<'duplicate-key'>('duplicate-key'), target: fc.constantFrom(...bodyKeys), value: hostileJson }),
        );
      }
      if (queryParams.length > 0) {
        choices.push(
          fc.record({
            kind: fc.constant<'query'>('query'),
            target: fc.constantFrom(...queryParams.map((p) => p.name)),
            values: fc.array(hostileUrlText, { minLength: 1, maxLength: 2 }),
          }),
        );
      }
      if (pathParams.length > 0) {
        choices.push(
          fc.record({ kind: fc.constant<'path'>('path'), target: fc.constantFrom(...pathParams.map((p) => p.name)), value: fc.oneof(hostileUrlText, hostileNumber.map(String)) }),
        );
      }
      const needsVictim = [...bodyKeys, ...operation.parameters.map((parameter) => parameter.name)].some((name) => SEEDS[name] !== undefined);

      const runCase = async (mutation: Mutation) => {
        const context = await freshContext(needsVictim);
        const label = `${operation.id} ${JSON.stringify(mutation, (_key, value: unknown) => (value instanceof Uint8Array ? `bytes(${value.length})` : value)).slice(0, 300)}`;
        const body = operation.body === undefined ? undefined : (validValue(operation.body, '', context) as Record<string, JsonValue>);
        const query = new URLSearchParams();
        for (const parameter of queryParams) query.set(parameter.name, String(validValue(parameter.place, parameter.name, context)));
        const pathValues: Record<string, string> = Object.fromEntries(
          pathParams.map((parameter) => [parameter.name, String(validValue(parameter.place, parameter.name, context))]),
        );
        const headers: Record<string, string> = {};
        let text = body === undefined ? undefined : JSON.stringify(body);
        let bytes: Uint8Array | undefined;
        let verdict: Verdict = { invalid: false, valid: mutation.kind === 'none' };

        switch (mutation.kind) {
          case 'value': {
            const mutated = { ...body, [mutation.target]: mutation.value };
            text = JSON.stringify(mutated);
            const validate = validatorOf(operation.body as SchemaAt);
            const schemaRefuses =
              !validate(mutated) &&
              (validate.errors ?? []).some(
                (error) => error.instancePath.split('/')[1] === mutation.target || (error.params as { missingProperty?: string }).missingProperty === mutation.target,
              );
            const unstorable = JSON.stringify(mutation.value).includes('\\u0000') || (typeof mutation.value === 'string' && !storable(mutation.value));
            verdict = { invalid: schemaRefuses || unstorable, field: mutation.target };
            break;
          }
          case 'unknown-key':
            // A computed `__proto__` key is an own property: JSON.stringify writes it.
            text = JSON.stringify({ ...body, [mutation.key]: mutation.value });
            verdict = { invalid: true, field: keyName(mutation.key) };
            break;
          case 'duplicate-key':
            text = withDuplicate(body ?? {}, mutation.target, mutation.value);
            break;
          case 'query':
            query.delete(mutation.target);
            for (const value of mutation.values) query.append(mutation.target, value);
            // A URL is UTF-8: an unpaired surrogate arrives as U+FFFD, a NUL as sent.
            verdict = {
              invalid: !queryParams.some((parameter) => parameter.name === mutation.target) || mutation.values.some((value) => !storable(value.toWellFormed())),
              field: keyName(mutation.target.toWellFormed()),
            };
            break;
          case 'path':
            pathValues[mutation.target] = mutation.value;
            // A value that is not an id may also route elsewhere (404): only no 5xx is certain.
            break;
          case 'truncate':
          case 'garble':
            bytes = tamper(bytesOf(text ?? '{}'), mutation);
            break;
          case 'compress': {
            const plain = bytesOf(text ?? '{}');
            if (mutation.how === 'gzip-cut') {
              headers['content-encoding'] = 'gzip';
              const compressed = gzipSync(plain);
              bytes = new Uint8Array(compressed.subarray(0, compressed.length - 4));
              verdict = { invalid: true };
            } else if (mutation.how === 'unsupported-encoding') {
              headers['content-encoding'] = 'snappy';
              bytes = plain;
            } else {
              headers['content-encoding'] = mutation.how === 'brotli-garbage' ? 'br' : 'gzip';
              bytes = mutation.how === 'brotli-garbage' ? new Uint8Array([0x0b, 0xff, 0x00, 0x61, 0x7a]) : plain;
              verdict = { invalid: true };
            }
            break;
          }
          default:
            break;
        }
        const path = operation.path.replace(/\{(\w+)\}/g, (_match, name: string) => encodeURIComponent((pathValues[name] ?? '').toWellFormed()));
        const search = query.toString();
        const answer = await raw.rest(operation.method, `${path}${search === '' ? '' : `?${search}`}`, {
          token: context.admin,
          headers: { ...headers, ...(bytes !== undefined || text !== undefined ? { 'content-type': 'application/json' } : {}) },
          ...(bytes !== undefined ? { body: bytes } : text !== undefined ? { body: text } : {}),
        });
        judge(answer, verdict, label, true);
      };
      await runCase({ kind: 'none' });
      await fc.assert(fc.asyncProperty(fc.oneof(...choices), runCase), settings);
    },
  );
});

describe.each(RPC_PROTOCOLS)('RPC over %s: one hostile part in an otherwise valid request', (protocol) => {
  const json = protocol === 'connect-json';
  it.each(rpcMethods.map((method) => [`${method.parent.typeName}/${method.name}`, method] as const))(
    'when %s is fuzzed, then never internal, always a well-formed answer, and what is invalid is invalid_argument naming the field',
    async (_name, method) => {
      const desc = method.input;
      const fields = desc.fields.filter((field) => field.fieldKind === 'scalar' || field.fieldKind === 'enum');
      const fieldNames = fields.map((field) => field.name);
      const choices: fc.Arbitrary<Mutation>[] = [wireTamper];
      if (json) {
        choices.push(fc.record({ kind: fc.constant<'unknown-key'>('unknown-key'), key: unknownKey, value: hostileJson }));
        if (fields.length > 0) {
          choices.push(
            fc.record({ kind: fc.constant<'value'>('value'), target: fc.constantFrom(...fieldNames), value: hostileJson }),
            fc.record({ kind: fc.constant<'value'>('value'), target: fc.constantFrom(...fieldNames), value: hostileJson }),
            fc.record({ kind: fc.constant<'duplicate-key'>('duplicate-key'), target: fc.constantFrom(...fieldNames), value: hostileJson }),
          );
        }
      } else {
        const declared = new Set(desc.fields.map((field) => field.number));
        choices.push(
          fc.record({
            kind: fc.constant<'raw-field'>('raw-field'),
            number: fc.oneof(fc.constantFrom(...(declared.size > 0 ? [...declared] : [1])), fc.integer({ min: 1, max: 536_870_911 })),
            wireType: fc.constantFrom(WireType.Varint, WireType.Bit64, WireType.LengthDelimited, WireType.Bit32),
            payload: fc.oneof(fc.uint8Array({ maxLength: 12 }), fc.constant(new Uint8Array([0x41, 0xed, 0xa0, 0x80])), fc.constant(new Uint8Array([0x00]))),
          }),
        );
        if (fields.length > 0) {
          const typedMutation = fc
            .constantFrom(...fields)
            .chain((field) =>
              (field.fieldKind === 'enum'
                ? fc.oneof(fc.constantFrom(...field.enum.values.map((value) => value.number)), hostileInt32)
                : typeof reflect(desc).get(field) === 'string'
                  ? hostileString
                  : hostileInt32
              ).map((value): Mutation => ({ kind: 'value', target: field.name, value })),
            );
          choices.push(typedMutation, typedMutation);
        }
      }
      const needsVictim = desc.fields.some((field) => SEEDS[field.jsonName] !== undefined);
      const procedure = `${method.parent.typeName}/${method.name}`;
      const getAllowed = json && method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;

      const runCase = async (mutation: Mutation, viaGet: boolean) => {
        const context = await freshContext(needsVictim);
        const label = `${protocol} ${procedure} ${JSON.stringify(mutation, (_key, value: unknown) => (value instanceof Uint8Array ? `bytes(${Array.from(value).join(',')})` : value)).slice(0, 300)}`;
        const message = create(desc, validMessage(desc, context));
        let payload: Uint8Array = json ? bytesOf(JSON.stringify(toJson(desc, message))) : toBinary(desc, message);
        let options: NonNullable<Parameters<RawClient['rpc']>[3]> = {};
        let verdict: Verdict = { invalid: false, valid: mutation.kind === 'none' };

        switch (mutation.kind) {
          case 'value': {
            const field = desc.fields.find((candidate) => candidate.name === mutation.target) as DescField;
            if (json) {
              const body = toJson(desc, message) as Record<string, JsonValue>;
              body[field.jsonName] = mutation.value;
              payload = bytesOf(JSON.stringify(body));
              verdict = { invalid: certainlyInvalidJson(desc, field, mutation.value), field: field.name };
            } else {
              const typed = typedValue(field, mutation.value);
              if (typed === undefined) throw new Error(`no ${field.name} value on the wire for ${JSON.stringify(mutation.value)}`);
              const edited = create(desc, validMessage(desc, context));
              reflect(desc, edited).set(field, typed);
              payload = toBinary(desc, edited);
              verdict = { invalid: certainlyInvalidBinary(desc, field, typed), field: field.name };
            }
            break;
          }
          case 'unknown-key': {
            const body = toJson(desc, message) as Record<string, JsonValue>;
            const known = desc.fields.some((field) => field.jsonName === mutation.key || field.name === mutation.key);
            payload = bytesOf(JSON.stringify({ ...body, [mutation.key]: mutation.value }));
            verdict = { invalid: !known, field: keyName(mutation.key) };
            break;
          }
          case 'duplicate-key': {
            const body = toJson(desc, message) as Record<string, JsonValue>;
            const field = desc.fields.find((candidate) => candidate.name === mutation.target) as DescField;
            payload = bytesOf(withDuplicate(body, field.jsonName, mutation.value));
            // Decoded strictly, a key given twice is refused, whatever the values.
            verdict = { invalid: body[field.jsonName] !== undefined };
            break;
          }
          case 'raw-field': {
            const extra = rawField(mutation.number, mutation.wireType, mutation.payload);
            payload = new Uint8Array(Buffer.concat([payload, extra]));
            const declared = desc.fields.some((field) => field.number === mutation.number);
            verdict = { invalid: !declared && mutation.number <= 536_870_911 };
            break;
          }
          case 'truncate':
          case 'garble':
            options = { frame: (body) => tamper(body, mutation) };
            break;
          case 'compress': {
            const chosen = rpcCompression(mutation.how, protocol);
            options = chosen.options ?? {};
            if (chosen.payload !== undefined) payload = chosen.payload;
            // An empty message "compressed" is empty: there is nothing to decompress.
            const empty = mutation.how === 'named-gzip-sent-plain' && payload.length === 0;
            verdict = chosen.code !== undefined ? { invalid: false, code: chosen.code } : { invalid: !empty };
            break;
          }
          default:
            break;
        }
        // The idempotent RPCs also take a Connect GET, the message in the query (short ones:
        // a URL has a size limit of its own).
        if (viaGet && getAllowed && payload.length < 2000 && options.frame === undefined && options.declaredEncoding === undefined && options.compression === undefined) {
          const answer = await raw.connectGet(procedure, { encoding: 'json', message: new TextDecoder().decode(payload) }, { token: context.admin });
          judge(answer, verdict, `${label} (GET)`, false);
          return;
        }
        const answer = await raw.rpc(protocol, procedure, payload, { ...options, token: context.admin });
        judge(answer, verdict, label, false);
      };
      await runCase({ kind: 'none' }, false);
      await fc.assert(fc.asyncProperty(fc.oneof(...choices), fc.boolean(), runCase), settings);
    },
  );
});

/** A field of any number and wire type, with any payload, encoded correctly. */
function rawField(number: number, wireType: WireType, payload: Uint8Array): Uint8Array {
  const writer = new BinaryWriter().tag(number, wireType);
  const word = new DataView(new Uint8Array(8).buffer);
  payload.subarray(0, 8).forEach((byte, index) => word.setUint8(index, byte));
  switch (wireType) {
    case WireType.Varint:
      return writer.uint64(word.getBigUint64(0, true)).finish();
    case WireType.Bit64:
      return writer.fixed64(word.getBigUint64(0, true)).finish();
    case WireType.Bit32:
      return writer.fixed32(word.getUint32(0, true)).finish();
    default:
      return writer.bytes(payload).finish();
  }
}

/** The value a field of this kind can hold, when the hostile value fits it; the binary wire carries no other. */
function typedValue(field: DescField, value: JsonValue): string | number | undefined {
  const int32 = (candidate: JsonValue) => typeof candidate === 'number' && Number.isInteger(candidate) && candidate >= -(2 ** 31) && candidate < 2 ** 31;
  if (field.fieldKind === 'enum') return int32(value) ? (value as number) : undefined;
  if (field.fieldKind !== 'scalar') return undefined;
  const sample = reflect(field.parent).get(field);
  // UTF-8 cannot carry an unpaired surrogate: a client's encoder sends U+FFFD instead.
  if (typeof sample === 'string') return typeof value === 'string' ? value.toWellFormed() : undefined;
  if (typeof sample === 'number' && typeof value === 'number' && Number.isInteger(value)) return value | 0;
  return undefined;
}

/** Whether the RPC validator must refuse this value in a binary request (it arrives as sent, bar surrogates). */
function certainlyInvalidBinary(desc: DescMessage, field: DescField, value: string | number): boolean {
  if (typeof value === 'string') {
    if (!storable(value)) return true;
    if (value === '' && !field.proto.proto3Optional) return false;
    return refusedByRule(desc, field, value);
  }
  if (field.fieldKind === 'enum') {
    const known = field.enum.values.find((candidate) => candidate.number === value);
    if (known === undefined) return true;
    // An implicit zero is "not sent", for the required-ness the rules already check.
    if (value === 0 && !field.proto.proto3Optional) return false;
    return refusedByRule(desc, field, known.localName);
  }
  if (value === 0 && !field.proto.proto3Optional) return false;
  return refusedByRule(desc, field, value);
}

/** Whether a Connect JSON request with this value in this field must be refused. */
function certainlyInvalidJson(desc: DescMessage, field: DescField, value: JsonValue): boolean {
  if (value === null) return false; // JSON null is the field's default.
  if (typeof value === 'object') return true; // no scalar or enum takes an object or array
  if (field.fieldKind === 'enum') {
    if (typeof value === 'string') {
      const known = field.enum.values.find((candidate) => candidate.name === value);
      return known === undefined || (known.number !== 0 || field.proto.proto3Optional ? refusedByRule(desc, field, known.localName) : false);
    }
    if (typeof value !== 'number' || !Number.isInteger(value)) return true;
    return certainlyInvalidBinary(desc, field, value);
  }
  const sample = reflect(desc).get(field);
  if (typeof sample === 'string') {
    if (typeof value !== 'string') return true;
    if (!storable(value)) return true;
    if (value === '' && !field.proto.proto3Optional) return false;
    return refusedByRule(desc, field, value);
  }
  if (typeof sample === 'number') {
    // Protobuf JSON also takes an int32 as a decimal string; a boolean never.
    if (typeof value === 'boolean') return true;
    const number = typeof value === 'string' ? Number(value) : value;
    if (typeof value === 'string' && (value.trim() !== value || value === '' || !/^-?\d+$/.test(value))) return false;
    if (!Number.isInteger(number) || number > 2 ** 31 - 1 || number < -(2 ** 31)) return true;
    if (number === 0 && !field.proto.proto3Optional) return false;
    return refusedByRule(desc, field, number);
  }
  return false;
}

/** Whether openapi.yaml's rule for this field (as the RPC validator finds it) refuses the value. */
function refusedByRule(desc: DescMessage, field: DescField, value: unknown): boolean {
  const rule = ruleOf(desc, field);
  return rule !== undefined && !validatorOf(rule)(value);
}
