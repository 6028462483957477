// REST JSON ⇄ proto messages, by one rule rather than a function per type. openapi.yaml's shapes
// are the protos' JSON with three differences, which this module applies to any message by
// reflection:
// - enums by their short names (`ADMIN`, not `USER_ROLE_ADMIN`);
// - Timestamps as ISO 8601 strings with milliseconds (`2026-11-28T09:00:00.000Z`);
// - a field with explicit presence that is unset is `null`, not absent.
// The plan for each message type is compiled once and cached.
import type { DescEnum, DescField, DescMessage, Message, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { FeatureSet_FieldPresence, timestampDate, timestampFromDate, TimestampSchema, type Timestamp } from '@bufbuild/protobuf/wkt';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type ToRest = (message: Message) => Record<string, Json>;
type FromRest = (json: Record<string, unknown>) => Record<string, unknown>;

const toRestPlans = new WeakMap<DescMessage, ToRest>();
const fromRestPlans = new WeakMap<DescMessage, FromRest>();

/** A message as openapi.yaml spells it. */
export function toRest<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): Record<string, Json> {
  return toRestPlan(schema)(message);
}

/** A REST request object as the init shape of a message (validated already against openapi.yaml). */
export function fromRest<Desc extends DescMessage>(schema: Desc, json: Record<string, unknown>): MessageInitShape<Desc> {
  return fromRestPlan(schema)(json) as MessageInitShape<Desc>;
}

/** The short (REST) name of an enum value, e.g. 2 of UserRole → `USER`. */
export function enumName(desc: DescEnum, value: number): string | undefined {
  return desc.values.find((candidate) => candidate.number === value)?.localName;
}

/** The number of an enum value by its short (REST) name. */
export function enumNumber(desc: DescEnum, name: string): number | undefined {
  return desc.values.find((candidate) => candidate.localName === name)?.number;
}

function toRestPlan(schema: DescMessage): ToRest {
  let plan = toRestPlans.get(schema);
  if (plan !== undefined) return plan;
  if (schema.typeName === TimestampSchema.typeName) throw new Error('a Timestamp is a field value, not a REST object');
  const steps = schema.fields.map((field) => ({ key: field.jsonName, local: field.localName, convert: valueToRest(field), nullable: hasPresence(field) }));
  plan = (message) => {
    const out: Record<string, Json> = {};
    const source = message as unknown as Record<string, unknown>;
    for (const step of steps) {
      const value = source[step.local];
      out[step.key] = value === undefined ? (step.nullable ? null : step.convert(undefined)) : step.convert(value);
    }
    return out;
  };
  toRestPlans.set(schema, plan);
  return plan;
}

function valueToRest(field: DescField): (value: unknown) => Json {
  switch (field.fieldKind) {
    case 'scalar':
      return (value) => (typeof value === 'bigint' ? Number(value) : (value as Json));
    case 'enum': {
      const desc = field.enum;
      return (value) => enumName(desc, value as number) ?? null;
    }
    case 'message': {
      if (field.message.typeName === TimestampSchema.typeName) return (value) => (value === undefined ? null : timestampDate(value as Timestamp).toISOString());
      const desc = field.message;
      return (value) => (value === undefined ? null : toRestPlan(desc)(value as Message));
    }
    case 'list': {
      if (field.listKind === 'message') {
        const desc = field.message;
        return (value) => (value as Message[]).map((item) => toRestPlan(desc)(item));
      }
      if (field.listKind === 'enum') {
        const desc = field.enum;
        return (value) => (value as number[]).map((item) => enumName(desc, item) ?? null);
      }
      return (value) => value as Json[];
    }
    case 'map':
      throw new Error(`map field ${field.name}: no REST rule yet`);
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
      const desc = field.enum;
      return (value) => (typeof value === 'string' ? (enumNumber(desc, value) ?? 0) : value);
    }
    case 'message': {
      if (field.message.typeName === TimestampSchema.typeName) return (value) => timestampFromDate(new Date(String(value)));
      const desc = field.message;
      return (value) => fromRestPlan(desc)(value as Record<string, unknown>);
    }
    case 'list': {
      if (field.listKind === 'enum') {
        const desc = field.enum;
        return (value) => (value as unknown[]).map((item) => (typeof item === 'string' ? (enumNumber(desc, item) ?? 0) : item));
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

/** Fields whose absence is a value of its own: proto3 `optional` scalars and enums, and messages. */
function hasPresence(field: DescField): boolean {
  // EXPLICIT: proto3 `optional`, and every singular message field.
  return field.fieldKind === 'message' || field.presence === FeatureSet_FieldPresence.EXPLICIT;
}
