// The one conversion between database rows (Prisma), the API's messages (protobuf-es) and the
// REST JSON of openapi.yaml, driven by the messages' descriptors instead of a function per type.
// The rules, which the protos and prisma/schema.prisma are written to:
// - a message field and its column have the same name (`first_name` ⇄ `firstName`);
// - an enum value's short name is the stored value (`USER_ROLE_ADMIN` is `ADMIN`); UNSPECIFIED (or
//   a number without a name) coming in is a ValidationError on that field;
// - a nullable column is a field with presence (proto3 `optional`): NULL ⇄ absent, and an empty
//   string stays an empty string;
// - a DateTime column is a google.protobuf.Timestamp, to the millisecond; one that is not
//   `optional` must be there;
// - a Json column holding an object is a google.protobuf.Struct, or a map<string, string> of its
//   values as text;
// - REST JSON is the message under its JSON names, enums by short name, timestamps as ISO 8601
//   strings with milliseconds, and `null` for a field with presence that is unset (and for an
//   empty map, which cannot be absent otherwise).
// A field of the message that the row lacks is left unset (a profile has no password hash); a
// column the message lacks is not carried (the public User has no password hash). Each message
// type's plan is compiled once, on first use, and kept in a WeakMap by descriptor.
//
// rowMapping() adds the compile-time check: it does not compile unless the message's fields and
// the row type's keys are the same names, and a scalar field is optional exactly where its column
// is nullable (or the row's key optional).
import {
  create,
  ScalarType,
  type DescEnum,
  type DescField,
  type DescMessage,
  type JsonObject,
  type JsonValue,
  type Message,
  type MessageInitShape,
  type MessageShape,
} from '@bufbuild/protobuf';
import { FeatureSet_FieldPresence, timestampDate, timestampFromDate, timestampMs, TimestampSchema, type Timestamp } from '@bufbuild/protobuf/wkt';
import { isoTime } from './iso-time.ts';
import { ValidationError } from './errors.ts';

/**
 * The value of a message field the other side always sets. proto3 cannot mark it required, so a
 * missing one means that side is broken or of another version: a MissingFieldError, an internal
 * fault in an answer, which a repository service turns into invalid_argument when a request
 * lacks it (refusingIncompleteRequests).
 */
export function requireField<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new MissingFieldError(field);
  return value;
}

/**
 * A required field a message lacks. In an answer it is the answering side's fault (internal); a
 * server that finds it in a request refuses the request instead (see refusingIncompleteRequests).
 */
export class MissingFieldError extends Error {
  readonly field: string;
  constructor(field: string) {
    super(`message lacks its required field ${field}`);
    this.field = field;
  }
}

/**
 * A field whose value the receiving side cannot take (a timestamp outside the dates JavaScript
 * can hold, say). Like MissingFieldError: a server that finds it in a request refuses the request
 * as invalid_argument (refusingIncompleteRequests).
 */
export class InvalidFieldError extends Error {
  readonly field: string;
  readonly why: string;
  constructor(field: string, why: string) {
    super(`message field ${field} ${why}`);
    this.field = field;
    this.why = why;
  }
}

/** A Timestamp as a Date; one beyond the ±8.64e15 ms a Date holds is an InvalidFieldError. */
export function dateOfTimestamp(timestamp: Timestamp, field: string): Date {
  const date = timestampDate(timestamp);
  if (Number.isNaN(date.getTime())) throw new InvalidFieldError(field, 'is out of range');
  return date;
}

type Row = Record<string, unknown>;
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

// ---------------------------------------------------------------------------------------------
// The compile-time agreement of a message and a row type

/** The field names of a generated message type. */
export type MessageFields<M> = Exclude<keyof M, '$typeName' | '$unknown'>;

type Optional<T> = undefined extends T ? true : false;
type Nullable<Row, K extends keyof Row> = null extends Row[K] ? true : object extends Pick<Row, K> ? true : undefined extends Row[K] ? true : false;

/** Scalar and enum fields whose presence disagrees with their column's nullability. */
type NullabilityMismatch<M, Row> = {
  [K in MessageFields<M> & keyof Row]-?: NonNullable<M[K]> extends string | number | boolean | bigint ? (Optional<M[K]> extends Nullable<Row, K> ? never : K) : never;
}[MessageFields<M> & keyof Row];

/** What differs between a message type and a row type; every member `never` when they agree. */
export interface Disagreement<M, Row> {
  onlyInMessage: Exclude<MessageFields<M>, keyof Row>;
  onlyInRow: Exclude<keyof Row, MessageFields<M>>;
  nullability: NullabilityMismatch<M, Row>;
}

/** No argument when the types agree; otherwise an argument no value fits, named by the differences. */
export type Agreement<M, Row> = [Disagreement<M, Row>[keyof Disagreement<M, Row>]] extends [never] ? [] : [disagreement: Disagreement<M, Row>];

/** A message type's conversions to and from one row type, checked against each other by the compiler. */
export interface RowMapping<Desc extends DescMessage, R> {
  readonly schema: Desc;
  /** The row as a message; null and undefined columns leave the field unset. */
  toMessage(row: R): MessageShape<Desc>;
  /**
   * A caller-built input (changes, conditions) as a message, refusing what a message cannot say:
   * keys outside it, null, and values of the wrong kind (Prisma's operation objects, say).
   */
  toMessageChecked(input: R): MessageShape<Desc>;
  /** The message as a row: absent optional fields are null. */
  toRow(message: MessageShape<Desc>): R;
  /** The message as an input object: absent optional fields are left out. */
  toPartial(message: MessageShape<Desc>): R;
}

/**
 * The conversions between a message type and a row type. It compiles only if the two agree (see
 * Agreement): `rowMapping<typeof UserRecordSchema, db.User>(UserRecordSchema)`.
 */
export function rowMapping<Desc extends DescMessage, R extends object>(schema: Desc, ..._agreement: Agreement<MessageShape<Desc>, R>): RowMapping<Desc, R> {
  // The casts below are what the agreement vouches for: the plans follow the descriptor.
  return {
    schema,
    toMessage: (row) => rowToMessage(schema, row),
    toMessageChecked: (input) => checkedToMessage(schema, input),
    toRow: (message) => messageToRow(schema, message) as R,
    toPartial: (message) => messageToPartial(schema, message) as R,
  };
}

// ---------------------------------------------------------------------------------------------
// Rows ⇄ messages

interface RowPlan {
  toMessage: (row: Row) => Message;
  toMessageChecked: (input: Row) => Message;
  toRow: (message: Row, omitAbsent: boolean) => Row;
}

const rowPlans = new WeakMap<DescMessage, RowPlan>();

/** A row (or any object keyed by column) as a message; columns the message lacks are dropped. */
export function rowToMessage<Desc extends DescMessage>(schema: Desc, row: object): MessageShape<Desc> {
  return rowPlan(schema).toMessage(row as Row) as MessageShape<Desc>;
}

/** A message as a row: absent optional fields are null. */
export function messageToRow<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): Row {
  return rowPlan(schema).toRow(message, false);
}

/** A message as an input object: absent optional fields are left out rather than null. */
export function messageToPartial<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): Row {
  return rowPlan(schema).toRow(message, true);
}

/** See RowMapping.toMessageChecked. */
export function checkedToMessage<Desc extends DescMessage>(schema: Desc, input: object): MessageShape<Desc> {
  return rowPlan(schema).toMessageChecked(input as Row) as MessageShape<Desc>;
}

/** The stored name of an enum value; UNSPECIFIED or an unknown number is a ValidationError on `field`. */
export function enumToRow(desc: DescEnum, value: number, field: string): string {
  return enumPlan(desc).toName(value, field);
}

interface FieldStep {
  local: string;
  /** Column value (not null) → field value; undefined when the value is the same. */
  in: ((value: unknown) => unknown) | undefined;
  /** Whether a caller-built value is a plain value of the field. */
  accepts: (value: unknown) => boolean;
  /** Field value (present) → column value; undefined when the value is the same. */
  out: ((value: unknown) => unknown) | undefined;
  /** Absent means NULL (true), or the field must be there (false); fields without presence are always there. */
  nullable: boolean;
  name: string;
}

function rowPlan(schema: DescMessage): RowPlan {
  let plan = rowPlans.get(schema);
  if (plan !== undefined) return plan;
  const steps = schema.fields.map((field) => fieldStep(schema, field));
  const byLocal = new Map(steps.map((step) => [step.local, step]));
  plan = {
    toMessage(row) {
      const message = create(schema) as unknown as Row;
      for (const step of steps) {
        const value = row[step.local];
        if (value !== null && value !== undefined) message[step.local] = step.in === undefined ? value : step.in(value);
      }
      return message as unknown as Message;
    },
    toMessageChecked(input) {
      for (const [key, value] of Object.entries(input)) {
        if (value === undefined) continue;
        const step = byLocal.get(key);
        if (!step?.accepts(value)) throw unsupportedValue(schema, key, value);
      }
      return plan!.toMessage(input);
    },
    toRow(message, omitAbsent) {
      const row: Row = {};
      for (const step of steps) {
        const value = message[step.local];
        if (value !== undefined) row[step.local] = step.out === undefined ? value : step.out(value);
        else if (!step.nullable) throw new MissingFieldError(step.name);
        else if (!omitAbsent) row[step.local] = null;
      }
      return row;
    },
  };
  rowPlans.set(schema, plan);
  return plan;
}

function fieldStep(schema: DescMessage, field: DescField): FieldStep {
  const base = { local: field.localName, name: field.name, nullable: hasPresence(field) };
  switch (field.fieldKind) {
    case 'scalar': {
      const type = typeof scalarZero(field);
      return { ...base, in: undefined, out: undefined, accepts: (value) => typeof value === type };
    }
    case 'enum': {
      const { numbers, toName } = enumPlan(field.enum);
      const local = field.localName;
      return {
        ...base,
        in: (value) => {
          const number = numbers.get(value as string);
          if (number === undefined) throw new Error(`${field.enum.typeName} has no value ${JSON.stringify(value)}`);
          return number;
        },
        out: (value) => toName(value as number, local),
        accepts: (value) => typeof value === 'string' && numbers.has(value),
      };
    }
    case 'message': {
      const typeName = field.message.typeName;
      if (typeName === TimestampSchema.typeName) {
        // A Timestamp without `optional` is a NOT NULL column: absent is the sender's fault.
        return {
          ...base,
          nullable: field.proto.proto3Optional,
          in: (value) => timestampFromDate(value as Date),
          out: (value) => dateOfTimestamp(value as Timestamp, field.name),
          accepts: (value) => value instanceof Date,
        };
      }
      if (typeName === 'google.protobuf.Struct') {
        return { ...base, in: (value) => jsonObject(schema, field, value), out: undefined, accepts: isJsonObject };
      }
      break;
    }
    case 'map':
      if (field.mapKind === 'scalar' && typeof scalarZero(field) === 'string') {
        return { ...base, in: jsonObjectAsText, out: () => unsupported(schema, field), accepts: () => false };
      }
      break;
    case 'list':
      break;
  }
  // Compiles to a function that fails when used, so that a schema's other uses (REST, say) still work.
  return { ...base, in: () => unsupported(schema, field), out: () => unsupported(schema, field), accepts: () => false };
}

function unsupported(schema: DescMessage, field: DescField): never {
  throw new Error(`${schema.typeName}.${field.name}: no row rule for a ${field.fieldKind} field`);
}

function unsupportedValue(schema: DescMessage, key: string, value: unknown): Error {
  const shown = value === null ? 'null' : typeof value === 'object' ? `an operation object ${JSON.stringify(value)}` : JSON.stringify(value);
  return new Error(`${schema.name}.${key} cannot be sent as a message: it carries only plain values of the fields it lists, not ${shown}`);
}

/** The zero value of a scalar (or of a map's scalar values), whose typeof is the field's JS type. */
function scalarZero(field: DescField): unknown {
  const scalar = field.fieldKind === 'scalar' || (field.fieldKind === 'map' && field.mapKind === 'scalar') ? field.scalar : undefined;
  switch (scalar) {
    case ScalarType.STRING:
      return '';
    case ScalarType.BOOL:
      return false;
    case ScalarType.BYTES:
      return new Uint8Array();
    // 64-bit integers are bigint unless the field asks for strings.
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
    case ScalarType.SINT64:
      return 0n;
    default:
      return 0;
  }
}

/** Fields whose absence is a value of its own: proto3 `optional` scalars and enums, and messages. */
function hasPresence(field: DescField): boolean {
  return field.fieldKind === 'message' || field.presence === FeatureSet_FieldPresence.EXPLICIT;
}

interface EnumPlan {
  numbers: ReadonlyMap<string, number>;
  names: ReadonlyMap<number, string>;
  toName: (value: number, field: string) => string;
}

const enumPlans = new WeakMap<DescEnum, EnumPlan>();

function enumPlan(desc: DescEnum): EnumPlan {
  let plan = enumPlans.get(desc);
  if (plan !== undefined) return plan;
  // The zero value is UNSPECIFIED, which no column holds.
  const stored = desc.values.filter((value) => value.number !== 0);
  const numbers = new Map(stored.map((value) => [value.localName, value.number]));
  const names = new Map(desc.values.map((value) => [value.number, value.localName]));
  const storedNames = new Map(stored.map((value) => [value.number, value.localName]));
  const choices = `must be one of ${stored.map((value) => value.localName).join(', ')}`;
  plan = {
    numbers,
    names,
    toName(value, field) {
      const name = storedNames.get(value);
      if (name === undefined) throw new ValidationError('Validation failed', { [field]: choices });
      return name;
    },
  };
  enumPlans.set(desc, plan);
  return plan;
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// google.protobuf.Struct holds only a JSON object, so a column holding another JSON value (which
// no writer produces) is refused rather than altered. Prisma types object members as optional;
// stored JSON never holds undefined, so dropping it loses nothing.
function jsonObject(schema: DescMessage, field: DescField, value: unknown): JsonObject {
  if (!isJsonObject(value)) throw new Error(`${schema.typeName}.${field.name} must be a JSON object, not ${JSON.stringify(value)}`);
  return jsonObjectOf(value);
}

function jsonObjectOf(object: Record<string, unknown>): JsonObject {
  const result: JsonObject = {};
  for (const [key, value] of Object.entries(object)) {
    if (value !== undefined) result[key] = jsonValueOf(value);
  }
  return result;
}

function jsonValueOf(value: unknown): JsonValue {
  if (Array.isArray(value)) return value.map(jsonValueOf);
  if (isJsonObject(value)) return jsonObjectOf(value);
  return value as JsonValue;
}

// A proto map holds strings: values that are not are passed on as their text (nested ones as JSON).
function jsonObjectAsText(value: unknown): Record<string, string> {
  const text: Record<string, string> = {};
  if (!isJsonObject(value)) return text;
  for (const [key, each] of Object.entries(value)) {
    text[key] = typeof each === 'string' ? each : typeof each === 'number' || typeof each === 'boolean' ? String(each) : JSON.stringify(each);
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// Messages ⇄ REST JSON

type ToRest = (message: Row) => Record<string, Json>;
type FromRest = (json: Record<string, unknown>) => Record<string, unknown>;

const toRestPlans = new WeakMap<DescMessage, ToRest>();
const fromRestPlans = new WeakMap<DescMessage, FromRest>();

/** A message as openapi.yaml spells it. */
export function toRestJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): Record<string, Json> {
  return toRestPlan(schema)(message);
}

/** A REST request object (validated already against openapi.yaml) as the init shape of a message. */
export function fromRestJson<Desc extends DescMessage>(schema: Desc, json: Record<string, unknown>): MessageInitShape<Desc> {
  return fromRestPlan(schema)(json) as MessageInitShape<Desc>;
}

function toRestPlan(schema: DescMessage): ToRest {
  let plan = toRestPlans.get(schema);
  if (plan !== undefined) return plan;
  if (schema.typeName === TimestampSchema.typeName) throw new Error('a Timestamp is a field value, not a REST object');
  const steps = schema.fields.map((field) => ({ key: field.jsonName, local: field.localName, convert: valueToRest(field), nullable: hasPresence(field) }));
  plan = (message) => {
    const out: Record<string, Json> = {};
    for (const step of steps) {
      const value = message[step.local];
      if (step.convert === undefined) out[step.key] = value === undefined ? null : (value as Json);
      else out[step.key] = value === undefined && step.nullable ? null : step.convert(value);
    }
    return out;
  };
  toRestPlans.set(schema, plan);
  return plan;
}

/** undefined: the value is its own JSON (most scalars), which the plan copies without a call. */
function valueToRest(field: DescField): ((value: unknown) => Json) | undefined {
  switch (field.fieldKind) {
    case 'scalar':
      return typeof scalarZero(field) === 'bigint' ? (value) => Number(value) : undefined;
    case 'enum': {
      const { names } = enumPlan(field.enum);
      return (value) => names.get(value as number) ?? null;
    }
    case 'message': {
      if (field.message.typeName === TimestampSchema.typeName) return (value) => (value === undefined ? null : isoTime(timestampMs(value as Timestamp)));
      const desc = field.message;
      return (value) => (value === undefined ? null : toRestPlan(desc)(value as Row));
    }
    case 'list': {
      if (field.listKind === 'message') {
        const desc = field.message;
        return (value) => (value as Row[]).map((item) => toRestPlan(desc)(item));
      }
      if (field.listKind === 'enum') {
        const { names } = enumPlan(field.enum);
        return (value) => (value as number[]).map((item) => names.get(item) ?? null);
      }
      return (value) => value as Json[];
    }
    case 'map':
      if (field.mapKind === 'scalar') return (value) => (Object.keys(value as object).length === 0 ? null : { ...(value as Record<string, Json>) });
      throw new Error(`map field ${field.name}: no REST rule for maps of ${field.mapKind}s`);
  }
}

function fromRestPlan(schema: DescMessage): FromRest {
  let plan = fromRestPlans.get(schema);
  if (plan !== undefined) return plan;
  const steps = new Map(schema.fields.map((field) => [field.jsonName, { local: field.localName, convert: valueFromRest(field) }]));
  plan = (json) => {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(json)) {
      const step = steps.get(key);
      // Unknown keys were refused by the validator; null means "not given".
      if (step === undefined || value === null || value === undefined) continue;
      out[step.local] = step.convert(value);
    }
    return out;
  };
  fromRestPlans.set(schema, plan);
  return plan;
}

function valueFromRest(field: DescField): (value: unknown) => unknown {
  switch (field.fieldKind) {
    case 'enum': {
      const { numbers } = enumPlan(field.enum);
      return (value) => (typeof value === 'string' ? (numbers.get(value) ?? 0) : value);
    }
    case 'message': {
      if (field.message.typeName === TimestampSchema.typeName) return (value) => timestampFromDate(new Date(String(value)));
      const desc = field.message;
      return (value) => fromRestPlan(desc)(value as Record<string, unknown>);
    }
    case 'list': {
      if (field.listKind === 'enum') {
        const { numbers } = enumPlan(field.enum);
        return (value) => (value as unknown[]).map((item) => (typeof item === 'string' ? (numbers.get(item) ?? 0) : item));
      }
      if (field.listKind === 'message') {
        const desc = field.message;
        return (value) => (value as Record<string, unknown>[]).map((item) => fromRestPlan(desc)(item));
      }
      return (value) => value;
    }
    default:
      return (value) => value;
  }
}
