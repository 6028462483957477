// Breaking changes between two versions of an OpenAPI 3.1 document, from a client's point of view.
// oasdiff is not on npm; this covers the changes that break the clients of this API, with the
// direction of each schema in mind:
// - what clients send (parameters, request bodies) must not get narrower: the new server has to
//   accept every request the old one accepted. Removed properties or parameters, newly required
//   ones, removed enum values, tighter limits, changed patterns, formats and defaults all break.
// - what clients receive (response bodies and headers) must not lose anything they may read, nor
//   take a shape they could not have seen before: removed properties, properties no longer
//   required, removed success statuses or headers, and new types (a value that may now be null)
//   break. New enum values in responses do not: the API's enums are open, as the protos' are (a
//   new audit event type or error code is an addition), and clients must treat an unknown value
//   as "other". That promise is written in openapi.yaml's description.
// Anything new (paths, operations, optional parameters and properties, response fields, enum
// values on the request side) is an addition and passes.

/** One change that can break an existing client. */
export interface BreakingChange {
  /** Where: "PUT /api/v1/users/{}", then the parameter, body or response and the JSON path. */
  location: string;
  message: string;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = Record<string, Json>;

/** A string as itself, anything else (an author's mistake) as JSON. */
function jsonText(value: Json | undefined): string {
  if (value === undefined) return 'undefined';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

type Direction = 'request' | 'response';

interface Operation {
  path: string;
  item: JsonObject;
  operation: JsonObject;
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;

/** Keywords that only narrow what a request may contain when they are added or tightened. */
const UPPER_BOUNDS = ['maxLength', 'maximum', 'exclusiveMaximum', 'maxItems', 'maxProperties'] as const;
const LOWER_BOUNDS = ['minLength', 'minimum', 'exclusiveMinimum', 'minItems', 'minProperties'] as const;
/** Keywords whose any change alters which request values are accepted. */
const EXACT_KEYWORDS = ['pattern', 'format', 'const', 'multipleOf', 'default', 'uniqueItems'] as const;

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function asObject(value: Json | undefined): JsonObject {
  return isObject(value) ? value : {};
}

/** A document with its local `$ref`s resolvable. */
class Document {
  readonly root: JsonObject;

  constructor(root: unknown) {
    this.root = asObject(root as Json);
  }

  /** Follows `$ref: '#/…'` chains; a reference that resolves to nothing yields {}. */
  resolve(value: Json | undefined): JsonObject {
    let current = asObject(value);
    const seen = new Set<string>();
    while (typeof current.$ref === 'string') {
      const ref = current.$ref;
      if (seen.has(ref) || !ref.startsWith('#/')) return {};
      seen.add(ref);
      let target: Json | undefined = this.root;
      for (const part of ref.slice(2).split('/')) {
        target = asObject(target)[part.replaceAll('~1', '/').replaceAll('~0', '~')];
      }
      // Sibling keywords of a $ref (OpenAPI 3.1 allows them) apply on top of the target.
      const { $ref: _, ...siblings } = current;
      current = { ...asObject(target), ...siblings };
    }
    return current;
  }
}

/** A path template with its parameter names erased, so renaming `{id}` to `{userId}` is no change. */
function pathKey(path: string): string {
  return path.replaceAll(/\{[^}]*\}/g, '{}');
}

function typesOf(schema: JsonObject): Set<string> | undefined {
  const type = schema.type;
  if (typeof type === 'string') return new Set([type]);
  if (Array.isArray(type)) return new Set(type.filter((entry): entry is string => typeof entry === 'string'));
  return undefined;
}

/** Whether every value of type `inner` is also of one of `outer` (an integer is a number). */
function typeCovered(inner: string, outer: Set<string>): boolean {
  return outer.has(inner) || (inner === 'integer' && outer.has('number'));
}

function requiredOf(schema: JsonObject): Set<string> {
  return new Set(Array.isArray(schema.required) ? schema.required.filter((name): name is string => typeof name === 'string') : []);
}

function enumOf(schema: JsonObject): Json[] | undefined {
  if (Array.isArray(schema.enum)) return schema.enum;
  return undefined;
}

function show(value: Json | undefined): string {
  return JSON.stringify(value);
}

class Comparison {
  readonly changes: BreakingChange[] = [];
  readonly #base: Document;
  readonly #current: Document;
  // The pairs of schemas being compared further up: a recursive schema (a tree, say) stops there.
  readonly #ancestors = new Set<string>();

  constructor(base: Document, current: Document) {
    this.#base = base;
    this.#current = current;
  }

  add(location: string, message: string): void {
    this.changes.push({ location, message });
  }

  run(): void {
    const basePaths = asObject(this.#base.root.paths);
    const currentPaths = new Map(Object.entries(asObject(this.#current.root.paths)).map(([path, item]) => [pathKey(path), { path, item }]));
    for (const [path, baseItemRaw] of Object.entries(basePaths)) {
      const match = currentPaths.get(pathKey(path));
      if (match === undefined) {
        this.add(path, 'path removed');
        continue;
      }
      const baseItem = this.#base.resolve(baseItemRaw);
      const currentItem = this.#current.resolve(match.item);
      for (const method of METHODS) {
        const baseOperation = baseItem[method];
        if (baseOperation === undefined) continue;
        const where = `${method.toUpperCase()} ${path}`;
        const currentOperation = currentItem[method];
        if (currentOperation === undefined) {
          this.add(where, 'operation removed');
          continue;
        }
        this.#operation(where, { path, item: baseItem, operation: asObject(baseOperation) }, { path: match.path, item: currentItem, operation: asObject(currentOperation) });
      }
    }
  }

  #operation(where: string, base: Operation, current: Operation): void {
    this.#security(where, base.operation, current.operation);
    this.#parameters(where, this.#parametersOf(this.#base, base), this.#parametersOf(this.#current, current));
    this.#requestBody(where, this.#base.resolve(base.operation.requestBody), this.#current.resolve(current.operation.requestBody));
    this.#responses(where, asObject(base.operation.responses), asObject(current.operation.responses));
  }

  /** An operation anyone could call that now needs credentials breaks its anonymous callers. */
  #security(where: string, base: JsonObject, current: JsonObject): void {
    const anonymous = (document: Document, operation: JsonObject) => {
      const requirements = operation.security ?? document.root.security;
      return !Array.isArray(requirements) || requirements.length === 0 || requirements.some((entry) => Object.keys(asObject(entry)).length === 0);
    };
    if (anonymous(this.#base, base) && !anonymous(this.#current, current)) this.add(where, 'now requires authentication');
  }

  /**
   * Path-level parameters overridden by operation-level ones, keyed by `in` and `name`; path
   * parameters by their place in the template, since renaming one changes nothing on the wire.
   */
  #parametersOf(document: Document, { path, item, operation }: Operation): Map<string, JsonObject> {
    const placeholders = [...path.matchAll(/\{([^}]*)\}/g)].map((found) => found[1]);
    const parameters = new Map<string, JsonObject>();
    for (const list of [item.parameters, operation.parameters]) {
      if (!Array.isArray(list)) continue;
      for (const raw of list) {
        const parameter = document.resolve(raw);
        const name = typeof parameter.name === 'string' ? parameter.name : '';
        let key = `${jsonText(parameter.in)} ${name}`;
        if (parameter.in === 'path') key = `path {${placeholders.indexOf(name)}}`;
        // Header names are case-insensitive.
        if (parameter.in === 'header') key = `header ${name.toLowerCase()}`;
        parameters.set(key, parameter);
      }
    }
    return parameters;
  }

  #parameters(where: string, base: Map<string, JsonObject>, current: Map<string, JsonObject>): void {
    for (const [key, parameter] of base) {
      const location = `${where} ${jsonText(parameter.in)} parameter ${jsonText(parameter.name)}`;
      const next = current.get(key);
      if (next === undefined) {
        this.add(location, 'parameter removed');
        continue;
      }
      if (parameter.required !== true && next.required === true) this.add(location, 'parameter became required');
      this.#schema(location, 'request', parameter.schema, next.schema);
    }
    for (const [key, parameter] of current) {
      if (!base.has(key) && parameter.required === true) {
        this.add(`${where} ${jsonText(parameter.in)} parameter ${jsonText(parameter.name)}`, 'new required parameter');
      }
    }
  }

  #requestBody(where: string, base: JsonObject, current: JsonObject): void {
    const location = `${where} request body`;
    const hadBody = Object.keys(base).length > 0;
    if (!hadBody) {
      if (current.required === true) this.add(location, 'new required request body');
      return;
    }
    if (base.required !== true && current.required === true) this.add(location, 'request body became required');
    const baseContent = asObject(base.content);
    const currentContent = asObject(current.content);
    if (Object.keys(currentContent).length === 0 && Object.keys(baseContent).length > 0) {
      this.add(location, 'request body removed');
      return;
    }
    for (const [mediaType, media] of Object.entries(baseContent)) {
      const next = currentContent[mediaType];
      if (next === undefined) {
        this.add(location, `media type ${mediaType} no longer accepted`);
        continue;
      }
      this.#schema(`${location} (${mediaType})`, 'request', asObject(media).schema, asObject(next).schema);
    }
  }

  #responses(where: string, base: JsonObject, current: JsonObject): void {
    for (const [status, baseRaw] of Object.entries(base)) {
      const location = `${where} response ${status}`;
      const success = status.startsWith('2');
      const currentRaw = current[status];
      if (currentRaw === undefined) {
        // Clients act on the success statuses; dropping a documented error status leaves them a
        // branch that never runs, which breaks nothing.
        if (success) this.add(location, 'success status removed');
        continue;
      }
      const baseResponse = this.#base.resolve(baseRaw);
      const currentResponse = this.#current.resolve(currentRaw);
      const currentHeaders = new Map(Object.entries(asObject(currentResponse.headers)).map(([name, header]) => [name.toLowerCase(), header]));
      for (const [name, header] of Object.entries(asObject(baseResponse.headers))) {
        const next = currentHeaders.get(name.toLowerCase());
        if (next === undefined) {
          this.add(location, `header ${name} removed`);
          continue;
        }
        this.#schema(`${location} header ${name}`, 'response', this.#base.resolve(header).schema, this.#current.resolve(next).schema);
      }
      const currentContent = asObject(currentResponse.content);
      for (const [mediaType, media] of Object.entries(asObject(baseResponse.content))) {
        const next = currentContent[mediaType];
        if (next === undefined) {
          this.add(location, `media type ${mediaType} removed`);
          continue;
        }
        this.#schema(`${location} (${mediaType})`, 'response', asObject(media).schema, asObject(next).schema);
      }
    }
    for (const status of Object.keys(current)) {
      // A client written for 200 does not expect a 202 it was never told about.
      if (status.startsWith('2') && base[status] === undefined && Object.keys(base).some((old) => old.startsWith('2'))) {
        this.add(`${where} response ${status}`, 'new success status');
      }
    }
  }

  #schema(location: string, direction: Direction, baseRaw: Json | undefined, currentRaw: Json | undefined, path = ''): void {
    if (baseRaw === undefined) return;
    const here = path === '' ? location : `${location}: ${path}`;
    const base = this.#base.resolve(baseRaw);
    const current = this.#current.resolve(currentRaw);
    const key = `${direction} ${show(baseRaw)} ${show(currentRaw ?? null)}`;
    if (this.#ancestors.has(key)) return;
    this.#ancestors.add(key);
    try {
      this.#node(here, location, direction, base, current, path);
    } finally {
      this.#ancestors.delete(key);
    }
  }

  #node(here: string, location: string, direction: Direction, base: JsonObject, current: JsonObject, path: string): void {
    this.#types(here, direction, base, current);
    this.#enums(here, direction, base, current);
    if (direction === 'request') this.#limits(here, base, current);
    this.#properties(location, direction, base, current, path);

    const baseItems = base.items;
    if (isObject(baseItems)) this.#schema(location, direction, baseItems, current.items, `${path}[]`);
    const baseAdditional = base.additionalProperties;
    if (isObject(baseAdditional)) {
      this.#schema(location, direction, baseAdditional, isObject(current.additionalProperties) ? current.additionalProperties : {}, `${path}{}`);
    }
    if (direction === 'request' && base.additionalProperties !== false && current.additionalProperties === false) {
      this.add(here, 'no longer accepts additional properties');
    }
    this.#combinators(here, location, direction, base, current, path);
  }

  #types(here: string, direction: Direction, base: JsonObject, current: JsonObject): void {
    const baseTypes = typesOf(base);
    const currentTypes = typesOf(current);
    if (currentTypes === undefined) return;
    if (baseTypes === undefined) {
      if (direction === 'request') this.add(here, `type restricted to ${[...currentTypes].join(' | ')}`);
      return;
    }
    if (direction === 'request') {
      const lost = [...baseTypes].filter((type) => !typeCovered(type, currentTypes));
      if (lost.length > 0) this.add(here, `type ${[...baseTypes].join(' | ')} → ${[...currentTypes].join(' | ')}: ${lost.join(', ')} no longer accepted`);
    } else {
      const added = [...currentTypes].filter((type) => !typeCovered(type, baseTypes));
      if (added.length > 0) this.add(here, `type ${[...baseTypes].join(' | ')} → ${[...currentTypes].join(' | ')}: may now be ${added.join(', ')}`);
    }
  }

  #enums(here: string, direction: Direction, base: JsonObject, current: JsonObject): void {
    // Only requests can be broken by an enum: a response enum that gains a value is an addition
    // (see the file comment), and one that loses a value only sends less.
    if (direction !== 'request') return;
    const baseEnum = enumOf(base);
    const currentEnum = enumOf(current);
    if (currentEnum === undefined) return;
    if (baseEnum === undefined) {
      this.add(here, `values restricted to ${show(currentEnum)}`);
      return;
    }
    const allowed = new Set(currentEnum.map(show));
    const removed = baseEnum.filter((value) => !allowed.has(show(value)));
    if (removed.length > 0) this.add(here, `enum value${removed.length > 1 ? 's' : ''} ${removed.map(show).join(', ')} removed`);
  }

  #limits(here: string, base: JsonObject, current: JsonObject): void {
    for (const keyword of UPPER_BOUNDS) {
      const before = base[keyword];
      const after = current[keyword];
      if (typeof after !== 'number') continue;
      if (typeof before !== 'number') this.add(here, `${keyword} ${after} added`);
      else if (after < before) this.add(here, `${keyword} lowered from ${before} to ${after}`);
    }
    for (const keyword of LOWER_BOUNDS) {
      const before = base[keyword];
      const after = current[keyword];
      if (typeof after !== 'number') continue;
      if (typeof before !== 'number') this.add(here, `${keyword} ${after} added`);
      else if (after > before) this.add(here, `${keyword} raised from ${before} to ${after}`);
    }
    for (const keyword of EXACT_KEYWORDS) {
      const before = base[keyword];
      const after = current[keyword];
      if (show(before) === show(after)) continue;
      if (after === undefined) {
        // Dropping a pattern or a format accepts more; dropping a default changes what an
        // omitted value means, as changing it does.
        if (keyword === 'default') this.add(here, `default ${show(before)} removed`);
        continue;
      }
      this.add(here, before === undefined ? `${keyword} ${show(after)} added` : `${keyword} changed from ${show(before)} to ${show(after)}`);
    }
  }

  #properties(location: string, direction: Direction, base: JsonObject, current: JsonObject, path: string): void {
    const baseProperties = asObject(base.properties);
    const currentProperties = asObject(current.properties);
    const baseRequired = requiredOf(base);
    const currentRequired = requiredOf(current);
    const at = (name: string) => `${location}: ${path === '' ? name : `${path}.${name}`}`;
    for (const [name, schema] of Object.entries(baseProperties)) {
      const next = currentProperties[name];
      if (next === undefined) {
        // A client that sends it is refused (or ignored); a client that reads it finds nothing.
        this.add(at(name), 'property removed');
        continue;
      }
      if (direction === 'response' && baseRequired.has(name) && !currentRequired.has(name)) this.add(at(name), 'no longer always present');
      this.#schema(location, direction, schema, next, path === '' ? name : `${path}.${name}`);
    }
    if (direction === 'request') {
      for (const name of currentRequired) {
        if (baseRequired.has(name)) continue;
        this.add(at(name), baseProperties[name] === undefined ? 'new required property' : 'property became required');
      }
    }
  }

  /** allOf entries are compared in order; a new entry adds constraints, a removed one lifts them. */
  #combinators(here: string, location: string, direction: Direction, base: JsonObject, current: JsonObject, path: string): void {
    const baseAll = Array.isArray(base.allOf) ? base.allOf : [];
    const currentAll = Array.isArray(current.allOf) ? current.allOf : [];
    baseAll.forEach((entry, index) => {
      if (index < currentAll.length) this.#schema(location, direction, entry, currentAll[index], `${path}(allOf ${index})`);
    });
    if (direction === 'request' && currentAll.length > baseAll.length) this.add(here, `${currentAll.length - baseAll.length} allOf constraint(s) added`);
    // oneOf and anyOf have no order to pair them by: any change to them counts.
    for (const keyword of ['oneOf', 'anyOf'] as const) {
      const before = base[keyword];
      const after = current[keyword];
      if (before === undefined && after === undefined) continue;
      if (show(before) !== show(after)) this.add(here, `${keyword} changed`);
    }
  }
}

/** Every change from `base` to `current` (parsed OpenAPI documents) that can break a client. */
export function findBreakingChanges(base: unknown, current: unknown): BreakingChange[] {
  const comparison = new Comparison(new Document(base), new Document(current));
  comparison.run();
  return comparison.changes;
}
