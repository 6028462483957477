// Text the API refuses at its edge, whatever the operation, field or protocol: a rule that needs
// no schema because no field can take such text.
// - NUL (U+0000): PostgreSQL cannot store it in text columns (the query fails). In a password it
//   would be stored only inside a hash, but bcrypt implementations built on C strings end their
//   input at it (node's binding does not), so such a hash would verify differently elsewhere.
// - Unpaired UTF-16 surrogates: not Unicode text. A JSON body can spell one ("\ud800"), but UTF-8
//   cannot encode it, so the database driver would store U+FFFD instead of what was sent, and the
//   protobuf binary format cannot carry it at all (protobuf-es refuses invalid UTF-8). Refusing
//   them keeps every protocol answering alike and nothing stored differing from what was sent.
// Finer rules (single-line fields, formats) are the schemas' own, in openapi.yaml.
import { ScalarType, type DescEnum, type DescField, type DescMessage, type Message } from '@bufbuild/protobuf';
import { reflect, type ReflectList, type ReflectMap, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import type { FieldErrors } from '../domain/errors.ts';

export const NUL_REFUSED = 'must not contain NUL (U+0000) characters';
export const SURROGATE_REFUSED = 'must be valid Unicode text (no unpaired surrogates)';

/**
 * An empty field → problem map without a prototype: a client names the fields, and on a plain
 * object `details.constructor ??= …` or `details.__proto__ = …` would find the inherited
 * property and drop the problem (a refusal with no field named).
 */
export function noFieldErrors(): FieldErrors {
  return Object.create(null) as FieldErrors;
}

/** Why no field can take this text, or undefined when it is storable. */
export function unstorableText(text: string): string | undefined {
  if (text.includes('\u0000')) return NUL_REFUSED;
  if (!text.isWellFormed()) return SURROGATE_REFUSED;
  return undefined;
}

/**
 * Every string in a parsed JSON value (object keys included) that no field can take, keyed by
 * its path as REST names fields (`firstName`, `address.lines.0`), below `root` when given. The
 * walk uses an explicit stack: a body may be nested deeper than the call stack allows.
 */
export function findUnstorableText(value: unknown, root = ''): FieldErrors {
  const problems = noFieldErrors();
  const pending: [unknown, string][] = [[value, root]];
  const join = (path: string, key: string) => (path === '' ? key : `${path}.${key}`);
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [current, path] = next;
    if (typeof current === 'string') {
      const reason = unstorableText(current);
      if (reason !== undefined) problems[path === '' ? 'body' : path] ??= reason;
    } else if (Array.isArray(current)) {
      current.forEach((item, index) => pending.push([item, join(path, String(index))]));
    } else if (typeof current === 'object' && current !== null) {
      for (const [key, item] of Object.entries(current)) {
        const reason = unstorableText(key);
        // The key itself cannot be a path then; its printable form names it.
        if (reason !== undefined) problems[join(path, JSON.stringify(key))] ??= reason;
        else pending.push([item, join(path, key)]);
      }
    }
  }
  return problems;
}

/**
 * What no request message may carry, keyed by proto field path (`first_name`, `user.email`):
 * strings no field can take, enum numbers the enum does not declare (proto3 enums are open, so
 * the binary decoder keeps them) and fields the message does not declare (the binary decoder
 * keeps those too; JSON requests are decoded strictly instead). Requests are strict: a field a
 * client believes it set but the server ignores (a role, a filter) is worse than an error.
 */
export function findMessageProblems(desc: DescMessage, message: Message): FieldErrors {
  const problems = noFieldErrors();
  const pending: [ReflectMessage, string][] = [[reflect(desc, message), '']];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [current, prefix] = next;
    for (const unknown of current.getUnknown() ?? []) {
      problems[`${prefix}${unknown.no}`] ??= notAFieldOf(current.desc.typeName);
    }
    for (const field of current.fields) {
      if (!current.isSet(field)) continue;
      const path = `${prefix}${field.name}`;
      const report = (at: string, reason: string | undefined) => {
        if (reason !== undefined) problems[at] ??= reason;
      };
      switch (field.fieldKind) {
        case 'scalar':
          if (field.scalar === ScalarType.STRING) report(path, unstorableText(current.get(field)));
          break;
        case 'enum':
          report(path, undeclaredEnum(field.enum, current.get(field)));
          break;
        case 'message':
          pending.push([current.get(field), `${path}.`]);
          break;
        case 'list':
          checkList(field, current.get(field), path, report, pending);
          break;
        case 'map':
          checkMap(field, current.get(field), path, report, pending);
          break;
      }
    }
  }
  return problems;
}

type Report = (path: string, reason: string | undefined) => void;

function checkList(field: DescField & { fieldKind: 'list' }, list: ReflectList, path: string, report: Report, pending: [ReflectMessage, string][]): void {
  let index = 0;
  for (const item of list) {
    const at = `${path}[${index}]`;
    if (field.listKind === 'message') pending.push([item as ReflectMessage, `${at}.`]);
    else if (field.listKind === 'enum') report(at, undeclaredEnum(field.enum, item as number));
    else if (field.scalar === ScalarType.STRING) report(at, unstorableText(item as string));
    index += 1;
  }
}

function checkMap(field: DescField & { fieldKind: 'map' }, map: ReflectMap, path: string, report: Report, pending: [ReflectMessage, string][]): void {
  for (const [key, value] of map) {
    if (typeof key === 'string') {
      const reason = unstorableText(key);
      if (reason !== undefined) {
        report(path, reason);
        continue;
      }
    }
    const at = `${path}[${JSON.stringify(String(key))}]`;
    if (field.mapKind === 'message') pending.push([value as ReflectMessage, `${at}.`]);
    else if (field.mapKind === 'enum') report(at, undeclaredEnum(field.enum, value as number));
    else if (field.scalar === ScalarType.STRING) report(at, unstorableText(value as string));
  }
}

function undeclaredEnum(desc: DescEnum, value: number): string | undefined {
  return desc.values.some((candidate) => candidate.number === value) ? undefined : `${value} is not a value of ${desc.typeName}`;
}

export const QUERY_TEXT_REFUSED = 'must be percent-encoded UTF-8';
export const REPEATED_REFUSED = 'is given more than once';

/**
 * What is wrong with a query string (the part after `?`, as sent), by parameter name: text that
 * is not percent-encoded UTF-8 (`%FF`, `%ED%A0%80`, `%ZZ`, raw bytes beyond ASCII), which the
 * usual parsers would turn into U+FFFD or keep as written, a value other than the one sent; and,
 * with `refuseRepeats`, a name given twice, of which parsers keep either the first or the last.
 * A name that is itself undecodable is reported as `query`.
 */
export function findQueryProblems(query: string, refuseRepeats: boolean): FieldErrors {
  const problems = noFieldErrors();
  const seen = new Set<string>();
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const equals = pair.indexOf('=');
    const name = decodeQueryText(equals < 0 ? pair : pair.slice(0, equals));
    if (name === undefined) {
      problems['query'] ??= QUERY_TEXT_REFUSED;
      continue;
    }
    if (equals >= 0 && decodeQueryText(pair.slice(equals + 1)) === undefined) problems[name] ??= QUERY_TEXT_REFUSED;
    else if (refuseRepeats && seen.has(name)) problems[name] ??= REPEATED_REFUSED;
    seen.add(name);
  }
  return problems;
}

/** Printable ASCII only: anything else in a URL was sent unencoded, and is read as Latin-1. */
const RAW_QUERY_TEXT = /^[!-~]*$/;

function decodeQueryText(text: string): string | undefined {
  if (!RAW_QUERY_TEXT.test(text)) return undefined;
  if (!text.includes('%')) return text.replaceAll('+', ' ');
  try {
    // Throws on a malformed escape and on bytes that are not UTF-8 (surrogates included).
    return decodeURIComponent(text.replaceAll('+', ' '));
  } catch {
    return undefined;
  }
}

/**
 * The first member name an object in this JSON text gives twice, or undefined. JSON.parse keeps
 * the last, where a proxy's or a firewall's parser may keep the first: one body, two readings.
 * protobuf-es refuses such bodies for Connect JSON; REST bodies are checked with this, once
 * JSON.parse has accepted them (so every string ends and every escape is valid), on the decoded
 * text: a scan of the raw bytes before the parse looped for ever on a body that ended inside a
 * string (`{"a`), threw on a bad escape in a name, and was put out of step by UTF-16.
 */
export function repeatedJsonKey(json: string): string | undefined {
  // One entry per open container: the names seen (an object) or undefined (an array).
  const open: (Set<string> | undefined)[] = [];
  let nameNext = false;
  for (let at = 0; at < json.length; at += 1) {
    const char = json.charCodeAt(at);
    if (char === 0x22) {
      const start = at;
      let escaped = false;
      for (at += 1; at < json.length && json.charCodeAt(at) !== 0x22; at += 1) {
        if (json.charCodeAt(at) === 0x5c) {
          escaped = true;
          at += 1;
        }
      }
      const names = open.at(-1);
      if (nameNext && names !== undefined) {
        const name = escaped ? (JSON.parse(json.slice(start, at + 1)) as string) : json.slice(start + 1, at);
        if (names.has(name)) return name;
        names.add(name);
      }
      nameNext = false;
    } else if (char === 0x7b) {
      open.push(new Set());
      nameNext = true;
    } else if (char === 0x5b) {
      open.push(undefined);
      nameNext = false;
    } else if (char === 0x7d || char === 0x5d) {
      open.pop();
      nameNext = false;
    } else if (char === 0x2c) {
      nameNext = open.at(-1) !== undefined;
    }
  }
  return undefined;
}

/**
 * The most bytes a chunked HTTP/1.1 body of at most `limitBytes` may take on the wire, its
 * framing included (chunk sizes, extensions): a legitimate client's framing is a few bytes a
 * chunk, and a padded one's has no end (server.ts, boundFraming).
 */
export function framingBound(limitBytes: number): number {
  return 2 * limitBytes + 64 * 1024;
}

/** Whether an HTTP/1.1 request's framing announces a body (RFC 9112, 6.3): chunked, or a length other than 0. */
export function hasBody(req: { headers: Record<string, string | string[] | undefined> }): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** The refusal of a field number or key a request's message does not declare. */
export function notAFieldOf(typeName: string): string {
  return `is not a field of ${typeName}`;
}

/**
 * Whether the query of `url` has more than `max` `&`-separated pairs, empty ones counted: read
 * without decoding anything, and no further than the pair past `max`.
 */
export function queryPairsOver(url: string, max: number): boolean {
  let pairs = 0;
  for (let at = url.indexOf('?'); at >= 0 && pairs <= max; at = url.indexOf('&', at + 1)) pairs += 1;
  return pairs > max;
}
