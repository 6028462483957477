// REST and RPC are one API in two contracts, openapi.yaml and the public protos. This suite keeps
// them from drifting apart: every REST operation has its RPC and every public RPC its operation
// (or is listed below with a reason), and each pair takes the same request fields, with the same
// presence rules and validation limits, and answers with the same response fields.
//
// What the RPC request validator (src/controllers/rpc/request-validator.ts) already guarantees:
// an RPC request is checked against components/schemas/<request message name> and, for fields
// that schema lacks, against the components/parameters entry of the same name. It does not check
// that the REST operation uses those same schemas (an inline schema, a differently named body, or
// two parameters sharing a name — the last one wins — would part ways silently), that every field
// exists on both sides with compatible types and presence, that the enums have the same values,
// or anything about responses. Those are tested here; and the validation limits are probed
// through the real validator, field by field, against REST's own schema.
import { create, type DescEnum, type DescField, type DescFile, type DescMessage, type DescMethod, type DescService, type Message } from '@bufbuild/protobuf';
import { ScalarType } from '@bufbuild/protobuf';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import yaml from 'js-yaml';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RequestValidator } from '../../src/controllers/rpc/request-validator.ts';
import { ValidationError } from '../../src/domain/errors.ts';

// ajv-formats is CommonJS with a default export that TypeScript sees one level down.
const addFormats = addFormatsModule as unknown as typeof addFormatsModule.default;

const root = join(import.meta.dirname, '..', '..');

/** REST operations with no RPC, and why. */
const REST_ONLY: Record<string, string> = {
  getHealth: 'an HTTP liveness probe for load balancers; RPC callers have grpc.health.v1.Health/Check',
  getReadiness: 'an HTTP readiness probe; grpc.health.v1.Health/Check answers the same question over RPC',
  getPublicInfo: 'an unauthenticated banner (name, version, deployment mode) for browsers and status pages, not part of the RPC API',
};

/** Public RPCs with no REST operation, by full name, and why. None today. */
const RPC_ONLY: Record<string, string> = {};

/**
 * Where an operationId is not the RPC's name with a lower-case first letter (getCurrentUser ↔
 * GetCurrentUser): operationId → RPC name. None today; refreshToken ↔ RefreshToken follows the rule.
 */
const RPC_NAME_FOR_OPERATION: Record<string, string> = {};

/**
 * Fields whose two shapes differ on purpose, by `<RPC name> <request|response> <field path>`, and why.
 * A field path uses JSON names, `[]` for an array's items and `{}` for a map's values.
 */
const FIELD_EXCEPTIONS: Record<string, string> = {
  ...Object.fromEntries(
    ['UpdateUser', 'DeleteUser', 'ChangePassword', 'VerifyUser', 'UpdateUserStatus', 'UpdateUserRole'].map((rpc) => [
      `${rpc} request expectedVersion`,
      "REST sends the expected version as the If-Match header (the user's ETag), not as a body field; the RPC validator checks both against components/schemas/Version",
    ]),
  ),
  'ListAuditEvents response events[].details':
    'proto map<string, string>: numbers and booleans travel as their text, as AuditEvent.details says, and an empty map stands for ' +
    "REST's null (a map cannot be optional); REST keeps the values' JSON types",
};

// ----------------------------------------------------------------------------- the two contracts

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = Record<string, Json>;

/** A string as itself, anything else (an author's mistake) as JSON. */
function jsonText(value: Json | undefined): string {
  if (value === undefined) return 'undefined';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

const spec = yaml.load(await readFile(join(root, 'openapi.yaml'), 'utf8')) as JsonObject;

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
function asObject(value: Json | undefined): JsonObject {
  return isObject(value) ? value : {};
}

/** Follows a chain of local `$ref`s. */
function resolve(value: Json | undefined): JsonObject {
  let current = asObject(value);
  for (let hops = 0; typeof current.$ref === 'string' && hops < 20; hops += 1) {
    let target: Json | undefined = spec;
    for (const part of current.$ref.slice(2).split('/')) target = asObject(target)[part.replaceAll('~1', '/').replaceAll('~0', '~')];
    const { $ref: _, ...siblings } = current;
    current = { ...asObject(target), ...siblings };
  }
  return current;
}

const ANNOTATIONS = new Set(['description', 'examples', 'example', 'title', '$comment', 'deprecated', 'readOnly', 'writeOnly']);

/** A schema with every $ref inlined and annotations dropped: what a validator acts on. */
function inline(value: Json | undefined, depth = 0): Json {
  if (depth > 30) throw new Error('schema nests too deeply to inline (recursive?)');
  if (Array.isArray(value)) return value.map((entry) => inline(entry, depth + 1));
  if (!isObject(value)) return value ?? null;
  const resolved = resolve(value);
  return Object.fromEntries(
    Object.entries(resolved)
      .filter(([key]) => !ANNOTATIONS.has(key))
      .map(([key, entry]) => [key, key === 'enum' || key === 'const' || key === 'default' || key === 'required' ? entry : inline(entry, depth + 1)]),
  );
}

/** Where two inlined schemas differ, as JSON paths with both values. */
function differences(a: Json, b: Json, path = ''): string[] {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  if (isObject(a) && isObject(b)) {
    return [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((key) => differences(a[key] ?? null, b[key] ?? null, `${path}/${key}`));
  }
  return [`${path || '/'}: ${JSON.stringify(a)} ≠ ${JSON.stringify(b)}`];
}

interface RestField {
  name: string;
  source: 'body' | 'path' | 'query';
  schema: JsonObject;
  required: boolean;
}

interface RestOperation {
  id: string;
  label: string;
  fields: RestField[];
  /** The request body's schema, as written (possibly a $ref). */
  body: Json | undefined;
  /** The first success response's JSON schema. */
  response: JsonObject | undefined;
}

const METHODS = ['get', 'put', 'post', 'delete', 'patch'] as const;

function restOperations(): RestOperation[] {
  const operations: RestOperation[] = [];
  for (const [path, itemRaw] of Object.entries(asObject(spec.paths))) {
    const item = resolve(itemRaw);
    for (const method of METHODS) {
      const operation = asObject(item[method]);
      if (typeof operation.operationId !== 'string') continue;
      const fields: RestField[] = [];
      const parameters = new Map<string, JsonObject>();
      for (const raw of [...(Array.isArray(item.parameters) ? item.parameters : []), ...(Array.isArray(operation.parameters) ? operation.parameters : [])]) {
        const parameter = resolve(raw);
        parameters.set(`${jsonText(parameter.in)} ${jsonText(parameter.name)}`, parameter);
      }
      for (const parameter of parameters.values()) {
        // Headers and cookies are metadata on RPC, not request fields.
        if (parameter.in !== 'path' && parameter.in !== 'query') continue;
        fields.push({ name: jsonText(parameter.name), source: parameter.in, schema: resolve(parameter.schema), required: parameter.required === true });
      }
      const body = asObject(asObject(asObject(resolve(operation.requestBody).content)['application/json']).schema);
      const hasBody = Object.keys(body).length > 0;
      if (hasBody) {
        const schema = resolve(body);
        const required = new Set(Array.isArray(schema.required) ? schema.required : []);
        for (const [name, property] of Object.entries(asObject(schema.properties))) {
          fields.push({ name, source: 'body', schema: resolve(property), required: required.has(name) });
        }
      }
      const responses = asObject(operation.responses);
      const success = Object.keys(responses).find((status) => status.startsWith('2'));
      const response = success === undefined ? undefined : asObject(asObject(asObject(resolve(responses[success]).content)['application/json']).schema);
      operations.push({ id: operation.operationId, label: `${method.toUpperCase()} ${path}`, fields, body: hasBody ? body : undefined, response });
    }
  }
  return operations;
}

/** The public services: every arcana.* proto outside arcana/internal. */
async function publicServices(): Promise<DescService[]> {
  const dir = join(root, 'gen', 'proto', 'arcana');
  const services: DescService[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('_pb.js')) continue;
    const path = join(entry.parentPath, entry.name);
    if (relative(dir, path).split(sep)[0] === 'internal') continue;
    const module = (await import(path)) as Record<string, unknown>;
    for (const value of Object.values(module)) {
      if (typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'file') services.push(...(value as DescFile).services);
    }
  }
  return services;
}

const operations = restOperations();
const services = await publicServices();
const methods = services.flatMap((service) => service.methods);
const rpcName = (operationId: string) => RPC_NAME_FOR_OPERATION[operationId] ?? `${operationId.charAt(0).toUpperCase()}${operationId.slice(1)}`;
const fullName = (method: DescMethod) => `${method.parent.typeName}/${method.name}`;

interface Pair {
  name: string;
  operation: RestOperation;
  method: DescMethod;
}
const pairs: Pair[] = operations.flatMap((operation) => {
  const method = methods.find((candidate) => candidate.name === rpcName(operation.id));
  return method === undefined ? [] : [{ name: `${operation.id} ↔ ${fullName(method)}`, operation, method }];
});

// --------------------------------------------------------------------------- comparing one field

const INT32_RANGE = { minimum: -(2 ** 31), maximum: 2 ** 31 - 1 };
const UINT32_RANGE = { minimum: 0, maximum: 2 ** 32 - 1 };

function restTypes(schema: JsonObject): string[] {
  if (typeof schema.type === 'string') return [schema.type];
  if (Array.isArray(schema.type)) return schema.type.filter((type): type is string => typeof type === 'string');
  if (schema.const !== undefined) return [typeof schema.const === 'number' ? 'number' : typeof schema.const];
  return [];
}
const nullable = (schema: JsonObject) => restTypes(schema).includes('null');

/** The REST enum's values, from the schema or the first allOf/$ref that has them. */
function restEnum(schema: JsonObject): string[] | undefined {
  if (Array.isArray(schema.enum)) return schema.enum.filter((value): value is string => typeof value === 'string');
  return undefined;
}

/** A proto enum's values as REST spells them: without the prefix, and without the zero value. */
function protoEnumNames(desc: DescEnum): string[] {
  return desc.values.filter((value) => value.number !== 0).map((value) => value.localName);
}

type Direction = 'request' | 'response';

interface Context {
  rpc: string;
  direction: Direction;
  problems: string[];
  /** Messages being compared further up, to stop on recursive messages. */
  visiting: Set<string>;
}

/** The FIELD_EXCEPTIONS entries that excused a problem: an entry that never does is stale. */
const usedExceptions = new Set<string>();

function report(context: Context, path: string, problem: string): void {
  // An exception for a field covers what is inside it too (its items, map values, fields).
  const exception = Object.keys(FIELD_EXCEPTIONS).find((key) => {
    const prefix = `${context.rpc} ${context.direction} `;
    if (!key.startsWith(prefix)) return false;
    const excused = key.slice(prefix.length);
    return path === excused || ['.', '[', '{'].some((separator) => path.startsWith(`${excused}${separator}`));
  });
  if (exception !== undefined) {
    usedExceptions.add(exception);
    return;
  }
  context.problems.push(`${context.direction} ${path}: ${problem}`);
}

/** What kind of REST value a proto field's single value is, and whether REST's schema agrees. */
function compareValue(context: Context, path: string, schema: JsonObject, kind: { scalar?: ScalarType; enum?: DescEnum; message?: DescMessage }): void {
  const types = restTypes(schema).filter((type) => type !== 'null');
  const expectTypes = (wanted: string[], protoType: string) => {
    if (!types.every((type) => wanted.includes(type)) || types.length === 0)
      report(context, path, `REST type ${JSON.stringify(schema.type ?? null)} does not hold proto ${protoType}`);
  };
  if (kind.enum !== undefined) {
    expectTypes(['string'], kind.enum.typeName);
    const rest = restEnum(schema);
    const proto = protoEnumNames(kind.enum);
    if (rest === undefined) report(context, path, `REST has no enum for proto ${kind.enum.typeName}`);
    else if (JSON.stringify([...rest].sort()) !== JSON.stringify([...proto].sort())) {
      report(context, path, `enum values differ: REST ${JSON.stringify(rest)}, proto ${kind.enum.typeName} ${JSON.stringify(proto)}`);
    }
    return;
  }
  if (kind.message !== undefined) {
    if (kind.message.typeName === 'google.protobuf.Timestamp') {
      expectTypes(['string'], 'Timestamp');
      if (schema.format !== 'date-time') report(context, path, 'proto Timestamp, but REST format is not date-time');
      return;
    }
    expectTypes(['object'], kind.message.typeName);
    compareMessage(context, path, schema, kind.message);
    return;
  }
  switch (kind.scalar) {
    case ScalarType.STRING:
      expectTypes(['string'], 'string');
      return;
    case ScalarType.BOOL:
      expectTypes(['boolean'], 'bool');
      return;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      expectTypes(['number', 'integer'], 'double/float');
      return;
    case ScalarType.BYTES:
      expectTypes(['string'], 'bytes');
      return;
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
    case ScalarType.UINT32:
    case ScalarType.FIXED32: {
      expectTypes(['integer'], 'a 32-bit integer');
      // REST must not accept numbers the RPC field cannot carry, or a request valid over REST
      // has no RPC equivalent.
      const unsigned = kind.scalar === ScalarType.UINT32 || kind.scalar === ScalarType.FIXED32;
      const range = unsigned ? UINT32_RANGE : INT32_RANGE;
      const bounded =
        (schema.format === (unsigned ? 'uint32' : 'int32') || (typeof schema.maximum === 'number' && schema.maximum <= range.maximum)) &&
        (schema.format === (unsigned ? 'uint32' : 'int32') || (typeof schema.minimum === 'number' && schema.minimum >= range.minimum));
      if (context.direction === 'request' && !bounded)
        report(context, path, `REST accepts integers outside the range of proto ${unsigned ? 'uint32' : 'int32'}: add format: ${unsigned ? 'uint32' : 'int32'}`);
      return;
    }
    default:
      // 64-bit integers are strings in proto JSON: REST would have to say so.
      if (!(types.length === 1 && types[0] === 'string') && schema.format !== 'int64')
        report(context, path, `proto 64-bit integer, REST type ${JSON.stringify(schema.type ?? null)}`);
  }
}

/** Compares one proto field with the REST schema of the same JSON name. */
function compareField(context: Context, path: string, schema: JsonObject, field: DescField, required: boolean): void {
  const explicitPresence = field.proto.proto3Optional || field.fieldKind === 'message';
  if (context.direction === 'request') {
    if (required && field.proto.proto3Optional) report(context, path, 'REST requires it, but the proto field is `optional`: the RPC validator would not require it');
    // Without presence the RPC side cannot tell "not sent" from a zero value that REST accepts;
    // a REST default makes the zero value stand for that default, which is fine.
    if (!required && !explicitPresence && field.fieldKind !== 'list' && field.fieldKind !== 'map' && schema.default === undefined) {
      report(context, path, 'optional in REST without a default, but the proto field has no presence: mark it `optional`');
    }
  } else {
    if (nullable(schema) !== field.proto.proto3Optional) {
      report(context, path, nullable(schema) ? 'REST may answer null, but the proto field is not `optional`' : 'the proto field is `optional`, but REST never answers null');
    }
    if (!required && !explicitPresence) report(context, path, 'REST may leave it out, but the proto field always has a value');
  }
  switch (field.fieldKind) {
    case 'list': {
      if (!restTypes(schema).includes('array')) report(context, path, `proto repeated field, REST type ${JSON.stringify(schema.type ?? null)}`);
      const items = resolve(schema.items);
      if (field.listKind === 'enum') compareValue(context, `${path}[]`, items, { enum: field.enum });
      else if (field.listKind === 'message') compareValue(context, `${path}[]`, items, { message: field.message });
      else compareValue(context, `${path}[]`, items, { scalar: field.scalar });
      return;
    }
    case 'map': {
      if (!restTypes(schema).includes('object') || !isObject(schema.additionalProperties)) report(context, path, 'proto map, REST is not an object with additionalProperties');
      const values = resolve(schema.additionalProperties);
      if (field.mapKind === 'enum') compareValue(context, `${path}{}`, values, { enum: field.enum });
      else if (field.mapKind === 'message') compareValue(context, `${path}{}`, values, { message: field.message });
      else compareValue(context, `${path}{}`, values, { scalar: field.scalar });
      return;
    }
    case 'enum':
      compareValue(context, path, schema, { enum: field.enum });
      return;
    case 'message':
      compareValue(context, path, schema, { message: field.message });
      return;
    case 'scalar':
      compareValue(context, path, schema, { scalar: field.scalar });
  }
}

/** Compares a REST object schema with a proto message, field by JSON name. */
function compareMessage(context: Context, path: string, schemaRaw: JsonObject, message: DescMessage): void {
  if (context.visiting.has(message.typeName)) return;
  context.visiting.add(message.typeName);
  const schema = resolve(schemaRaw);
  const properties = asObject(schema.properties);
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  const at = (name: string) => (path === '' ? name : `${path}.${name}`);
  for (const field of message.fields) {
    const property = properties[field.jsonName];
    if (property === undefined) report(context, at(field.jsonName), `in proto ${message.typeName}, missing from REST`);
    else compareField(context, at(field.jsonName), resolve(property), field, required.has(field.jsonName));
  }
  for (const name of Object.keys(properties)) {
    if (message.fields.every((field) => field.jsonName !== name)) report(context, at(name), `in REST, missing from proto ${message.typeName}`);
  }
  context.visiting.delete(message.typeName);
}

// ------------------------------------------------------------ what the RPC validator applies

const components = asObject(spec.components);
const componentSchemas = asObject(components.schemas);

/**
 * The schema RequestValidator applies to one RPC request field, by its rule: the property of
 * components/schemas/<message name> when that schema has it, else the components/parameters
 * entry of the same name (the last such entry), else nothing. Probed below through the real
 * validator, so this restatement cannot quietly differ from it.
 */
function rpcAppliedSchema(message: DescMessage, field: DescField): { schema: Json; required: boolean; from: string } | undefined {
  const own = asObject(componentSchemas[message.name]);
  const property = asObject(own.properties)[field.jsonName];
  if (property !== undefined) {
    const required = Array.isArray(own.required) && own.required.includes(field.jsonName);
    return { schema: inline(property), required, from: `components/schemas/${message.name}` };
  }
  const matches = Object.entries(asObject(components.parameters)).filter(([, parameter]) => asObject(parameter).name === field.jsonName);
  const last = matches.at(-1);
  if (last === undefined) return undefined;
  const parameter = asObject(last[1]);
  return { schema: inline(parameter.schema), required: parameter.required === true && !field.proto.proto3Optional, from: `components/parameters/${last[0]}` };
}

// ---------------------------------------------------------------------- probing the validator

const ajv = new Ajv2020({ allErrors: true, strict: false });
addFormats(ajv);
const validator = new RequestValidator(spec);

/** Whether the RPC validator refuses `field` in a request where only that field is set. */
function rpcRefuses(message: DescMessage, field: DescField, value: unknown): boolean {
  const request = create(message) as Message & Record<string, unknown>;
  if (value !== undefined) request[field.localName] = value;
  try {
    validator.check(message, request);
    return false;
  } catch (error) {
    if (!(error instanceof ValidationError)) throw error;
    return error.details?.[field.name] !== undefined;
  }
}

interface Probe {
  /** The value as REST receives it (JSON); undefined: not sent. */
  rest: Json | undefined;
  /** The same value in the proto message. */
  proto: unknown;
}

/** Values at and across each limit REST's schema states for the field, that proto can carry. */
function probes(schema: JsonObject, field: DescField): Probe[] {
  const found: Probe[] = [{ rest: undefined, proto: undefined }];
  const explicit = field.proto.proto3Optional;
  const limits = [schema, ...(Array.isArray(schema.allOf) ? schema.allOf.map(resolve) : [])];
  const numbers = (keyword: string) => limits.map((part) => part[keyword]).filter((value): value is number => typeof value === 'number');
  if (field.fieldKind === 'scalar' && field.scalar === ScalarType.STRING) {
    const lengths = new Set<number>([1]);
    for (const min of numbers('minLength')) [min - 1, min].forEach((length) => lengths.add(length));
    for (const max of numbers('maxLength')) [max, max + 1].forEach((length) => lengths.add(length));
    // proto3 cannot send an empty string without presence: it is "not sent" (the first probe).
    for (const length of lengths) if (length > 0 || (length === 0 && explicit)) found.push({ rest: 'a'.repeat(length), proto: 'a'.repeat(length) });
    // Fails patterns and formats made of letters, digits and URL or address punctuation.
    found.push({ rest: '!!!!!!!!', proto: '!!!!!!!!' });
  }
  if (field.fieldKind === 'scalar' && field.scalar === ScalarType.INT32) {
    const values = new Set<number>([-1, 1, INT32_RANGE.maximum]);
    for (const bound of [...numbers('minimum'), ...numbers('maximum')]) [bound - 1, bound, bound + 1].forEach((value) => values.add(value));
    for (const value of values) {
      if (value < INT32_RANGE.minimum || value > INT32_RANGE.maximum || (value === 0 && !explicit)) continue;
      found.push({ rest: value, proto: value });
    }
  }
  if (field.fieldKind === 'enum') {
    for (const value of field.enum.values) if (value.number !== 0 || explicit) found.push({ rest: value.localName, proto: value.number });
    // A number the proto enum does not define reaches the validator as that number.
    found.push({ rest: 99, proto: 99 });
  }
  return found;
}

// ----------------------------------------------------------------------------------- the tests

describe('statuses every REST operation can answer', () => {
  it('when any request can be refused before its route runs, or by a fault, then every operation declares it: 400, 413, 415, 429, 500, and 503 under /api/v1', () => {
    // Found by an attacker (helper 129): a body that does not parse, is too large or in a coding
    // the server does not take is refused on every route, before the response check that would
    // have caught an undeclared status (express-openapi-validator checks only what a route
    // answers, and no 5xx), and 503 was declared on /ready alone. A client generated from the
    // contract had no type for any of them.
    const missing: string[] = [];
    for (const [path, item] of Object.entries(asObject(spec.paths))) {
      for (const method of METHODS) {
        const operation = asObject(resolve(item)[method]);
        if (typeof operation.operationId !== 'string') continue;
        const declared = Object.keys(asObject(operation.responses));
        const always = ['400', '413', '415', '429', '500', ...(path.startsWith('/api/v1/') ? ['503'] : [])];
        for (const status of always) if (!declared.includes(status)) missing.push(`${method.toUpperCase()} ${path} (${operation.operationId}): ${status}`);
      }
    }
    expect(missing).toEqual([]);
  });
});

describe('REST and RPC contracts', () => {
  it('when an operation is in openapi.yaml, then it has an RPC of the same name or is listed as REST-only', () => {
    const unmatched = operations.filter((operation) => REST_ONLY[operation.id] === undefined && !pairs.some((pair) => pair.operation === operation));
    expect(
      unmatched.map((operation) => `${operation.label} (${operation.id}): no RPC named ${rpcName(operation.id)} in ${services.map((service) => service.typeName).join(', ')}`),
    ).toEqual([]);
  });

  it('when an RPC is in a public service, then it has an operation or is listed as RPC-only', () => {
    const unmatched = methods.filter((method) => RPC_ONLY[fullName(method)] === undefined && !pairs.some((pair) => pair.method === method));
    expect(unmatched.map((method) => `${fullName(method)}: no operationId maps to it`)).toEqual([]);
  });

  it('when the services are read from gen/proto, then there are some: the walk above is not empty', () => {
    expect(services.length).toBeGreaterThan(0);
    expect(pairs.length).toBeGreaterThan(0);
  });

  describe.each(pairs)('$name', ({ operation, method }) => {
    it('when a request field is on one side, then it is on the other, with the same type and presence', () => {
      const context: Context = { rpc: method.name, direction: 'request', problems: [], visiting: new Set() };
      for (const field of operation.fields) {
        const protoField = method.input.fields.find((candidate) => candidate.jsonName === field.name);
        if (protoField === undefined) report(context, field.name, `REST ${field.source} field has no field in ${method.input.typeName}`);
        else compareField(context, field.name, field.schema, protoField, field.required);
      }
      for (const protoField of method.input.fields) {
        if (!operation.fields.some((field) => field.name === protoField.jsonName)) {
          report(context, protoField.jsonName, `field ${protoField.name} of ${method.input.typeName} has no REST body property, path or query parameter`);
        }
      }
      expect(context.problems, `${operation.label} (${operation.id}) ↔ ${fullName(method)}`).toEqual([]);
    });

    it('when the RPC validator checks a request field, then it applies the schema and requirement REST applies', () => {
      const problems: string[] = [];
      if (operation.body !== undefined) {
        const own = componentSchemas[method.input.name];
        if (own === undefined) problems.push(`REST has a request body, but there is no components/schemas/${method.input.name}: the RPC body fields go unvalidated`);
        else for (const difference of differences(inline(operation.body), inline(own))) problems.push(`request body vs components/schemas/${method.input.name} at ${difference}`);
      }
      for (const field of operation.fields) {
        const protoField = method.input.fields.find((candidate) => candidate.jsonName === field.name);
        if (protoField === undefined) continue;
        const applied = rpcAppliedSchema(method.input, protoField);
        if (applied === undefined) {
          problems.push(`${field.name}: REST validates it, the RPC validator finds no schema for it`);
          continue;
        }
        for (const difference of differences(inline(field.schema), applied.schema)) problems.push(`${field.name}: REST ${field.source} schema vs ${applied.from} at ${difference}`);
        if (field.source !== 'body' && applied.required !== field.required) {
          problems.push(`${field.name}: REST ${field.required ? 'requires' : 'does not require'} it, the RPC validator ${applied.required ? 'does' : 'does not'}`);
        }
      }
      expect(problems, `${operation.label} (${operation.id}) ↔ ${fullName(method)}`).toEqual([]);
    });

    it('when a field is sent at and across its limits, then REST and the RPC validator agree on each value', () => {
      const disagreements: string[] = [];
      for (const field of operation.fields) {
        const protoField = method.input.fields.find((candidate) => candidate.jsonName === field.name);
        if (protoField === undefined) continue;
        const check = ajv.compile(inline(field.schema) as object);
        for (const probe of probes(field.schema, protoField)) {
          const restRefuses = probe.rest === undefined ? field.required : !check(probe.rest);
          const rpcRefusesIt = rpcRefuses(method.input, protoField, probe.proto);
          if (restRefuses !== rpcRefusesIt) {
            const shown = probe.rest === undefined ? 'not sent' : JSON.stringify(probe.rest).slice(0, 40);
            disagreements.push(
              `${field.name} = ${shown}${typeof probe.rest === 'string' ? ` (${probe.rest.length} chars)` : ''}: REST ${restRefuses ? 'refuses' : 'accepts'}, RPC ${rpcRefusesIt ? 'refuses' : 'accepts'}`,
            );
          }
        }
      }
      expect(disagreements, `${operation.label} (${operation.id}) ↔ ${fullName(method)}`).toEqual([]);
    });

    it('when it answers, then the REST data and the RPC response have the same fields and types', () => {
      const context: Context = { rpc: method.name, direction: 'response', problems: [], visiting: new Set() };
      const envelope = resolve(operation.response);
      const properties = asObject(envelope.properties);
      const output = method.output;
      if (properties.items !== undefined) {
        // A list envelope: items ↔ the response's one repeated field, pagination ↔ pagination.
        const lists = output.fields.filter((field) => field.fieldKind === 'list');
        const list = lists[0];
        if (lists.length !== 1 || list === undefined) report(context, 'items', `${output.typeName} should have exactly one repeated field for REST's items`);
        else compareField(context, list.jsonName, resolve(properties.items), list, true);
        const pagination = output.fields.find((field) => field.jsonName === 'pagination');
        if (pagination === undefined) report(context, 'pagination', `missing from ${output.typeName}`);
        else compareField(context, 'pagination', resolve(properties.pagination), pagination, true);
        for (const field of output.fields) {
          if (field !== list && field !== pagination) report(context, field.jsonName, `in ${output.typeName}, not in REST's list envelope`);
        }
      } else {
        const data = resolve(properties.data);
        const only = output.fields.length === 1 ? output.fields[0] : undefined;
        if (restTypes(data).length === 1 && restTypes(data)[0] === 'null') {
          for (const field of output.fields) report(context, field.jsonName, `in ${output.typeName}, but REST answers data: null`);
        } else if (only !== undefined && asObject(data.properties)[only.jsonName] === undefined) {
          // REST's data is the response's one field itself (GetCurrentUser: data is the user).
          compareField(context, only.jsonName, data, only, true);
        } else {
          compareMessage(context, '', data, output);
        }
      }
      expect(context.problems, `${operation.label} (${operation.id}) ↔ ${fullName(method)}`).toEqual([]);
    });
  });

  // Last, after the comparisons above have recorded which field exceptions they needed.
  it('when an exception is listed, then it is still needed', () => {
    const stale = [
      ...Object.keys(REST_ONLY).filter((id) => !operations.some((operation) => operation.id === id) || pairs.some((pair) => pair.operation.id === id)),
      ...Object.keys(RPC_ONLY).filter((name) => !methods.some((method) => fullName(method) === name) || pairs.some((pair) => fullName(pair.method) === name)),
      ...Object.keys(RPC_NAME_FOR_OPERATION).filter((id) => !pairs.some((pair) => pair.operation.id === id)),
      ...Object.keys(FIELD_EXCEPTIONS).filter((key) => !usedExceptions.has(key)),
    ];
    expect(stale, 'exceptions that no longer excuse anything: remove them').toEqual([]);
  });
});
