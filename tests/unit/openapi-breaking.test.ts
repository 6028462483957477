// The OpenAPI breaking-change check (scripts/openapi-breaking.ts) over a small fixture document:
// each kind of break must be reported where it happens, and each kind of addition must pass.
import { describe, expect, it } from 'vitest';
import { findBreakingChanges } from '../../scripts/openapi-breaking.ts';

interface Schema {
  [keyword: string]: unknown;
  properties?: Record<string, Schema>;
  required?: string[];
  enum?: string[];
}
interface Parameter {
  name: string;
  in: string;
  required: boolean;
  schema: Schema;
}
interface Operation {
  operationId: string;
  parameters?: (Parameter | { $ref: string })[];
  security?: Record<string, string[]>[];
  requestBody?: { required: boolean; content: Record<string, { schema: Schema }> };
  responses: Record<string, { description: string; headers?: Record<string, { schema: Schema }>; content?: Record<string, { schema: Schema }> }>;
}
interface Doc {
  openapi: string;
  info: { title: string; version: string };
  security: Record<string, string[]>[];
  paths: Record<string, { parameters?: Parameter[] } & Partial<Record<'get' | 'put' | 'post' | 'delete', Operation>>>;
  components: { parameters: Record<string, Parameter>; schemas: Record<string, Schema> };
}

/** A tiny API with one of everything the check looks at. */
function fixture(): Doc {
  return {
    openapi: '3.1.0',
    info: { title: 'fixture', version: '1' },
    security: [{ bearerAuth: [] }],
    paths: {
      '/items': {
        get: {
          operationId: 'listItems',
          parameters: [{ $ref: '#/components/parameters/Page' }, { name: 'kind', in: 'query', required: false, schema: { $ref: '#/components/schemas/Kind' } }],
          responses: {
            '200': {
              description: 'A page.',
              headers: { 'X-Total': { schema: { type: 'integer' } } },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/ItemPage' } } },
            },
            '400': { description: 'Bad.' },
          },
        },
        post: {
          operationId: 'createItem',
          security: [],
          requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/CreateItem' } } } },
          responses: {
            '201': { description: 'Created.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Item' } } } },
            '400': { description: 'Bad.' },
          },
        },
      },
      '/items/{itemId}': {
        parameters: [{ name: 'itemId', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } }],
        get: {
          operationId: 'getItem',
          responses: { '200': { description: 'The item.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Item' } } } } },
        },
        delete: { operationId: 'deleteItem', responses: { '204': { description: 'Gone.' } } },
      },
    },
    components: {
      parameters: {
        Page: { name: 'page', in: 'query', required: false, schema: { type: 'integer', minimum: 1, maximum: 1000, default: 1 } },
      },
      schemas: {
        Kind: { type: 'string', enum: ['A', 'B'] },
        CreateItem: {
          type: 'object',
          additionalProperties: false,
          required: ['name'],
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 50, pattern: '^[a-z]+$' },
            kind: { $ref: '#/components/schemas/Kind' },
            note: { type: ['string', 'null'] },
            tags: { type: 'array', items: { type: 'string', maxLength: 10 } },
          },
        },
        Item: {
          type: 'object',
          required: ['id', 'name', 'kind', 'note'],
          properties: {
            id: { type: 'integer' },
            name: { type: 'string' },
            kind: { $ref: '#/components/schemas/Kind' },
            note: { type: ['string', 'null'] },
            meta: { type: 'object', additionalProperties: { type: 'string' } },
          },
        },
        ItemPage: { type: 'object', required: ['items'], properties: { items: { type: 'array', items: { $ref: '#/components/schemas/Item' } } } },
      },
    },
  };
}

/** Accessors that keep the cases short; the fixture has every part they return. */
function defined<T>(value: T | undefined): T {
  if (value === undefined) throw new Error('the fixture lacks this part');
  return value;
}
type ObjectSchema = Schema & { properties: Record<string, Schema>; required: string[] };
const objectSchema = (doc: Doc, name: string) => {
  const schema = defined(doc.components.schemas[name]);
  schema.properties ??= {};
  schema.required ??= [];
  return schema as ObjectSchema;
};
const createItem = (doc: Doc) => objectSchema(doc, 'CreateItem');
const item = (doc: Doc) => objectSchema(doc, 'Item');
const kind = (doc: Doc) => defined(doc.components.schemas.Kind);
const operation = (doc: Doc, path: string, method: 'get' | 'post' | 'delete' | 'put') => defined(defined(doc.paths[path])[method]);
const listItems = (doc: Doc) => operation(doc, '/items', 'get');
const postItem = (doc: Doc) => operation(doc, '/items', 'post');
const page = (doc: Doc) => defined(doc.components.parameters.Page);
const nameSchema = (doc: Doc) => defined(createItem(doc).properties.name);

interface Case {
  name: string;
  /** Applied to the base document and the current one alike, to set the scene. */
  before?: (doc: Doc) => void;
  change: (doc: Doc) => void;
}

function compare({ before, change }: Case) {
  const base = fixture();
  const current = fixture();
  before?.(base);
  before?.(current);
  change(current);
  return findBreakingChanges(base, current);
}

const breaking: (Case & { expected: { location: string; message: string } })[] = [
  {
    name: 'a path is removed',
    change: (doc) => delete doc.paths['/items/{itemId}'],
    expected: { location: '/items/{itemId}', message: 'path removed' },
  },
  {
    name: 'an operation is removed',
    change: (doc) => delete defined(doc.paths['/items/{itemId}']).delete,
    expected: { location: 'DELETE /items/{itemId}', message: 'operation removed' },
  },
  {
    name: 'a required query parameter is added',
    change: (doc) => defined(listItems(doc).parameters).push({ name: 'owner', in: 'query', required: true, schema: { type: 'string' } }),
    expected: { location: 'GET /items query parameter owner', message: 'new required parameter' },
  },
  {
    name: 'an optional parameter becomes required',
    change: (doc) => (page(doc).required = true),
    expected: { location: 'GET /items query parameter page', message: 'parameter became required' },
  },
  {
    name: 'a query parameter is removed',
    change: (doc) => defined(listItems(doc).parameters).pop(),
    expected: { location: 'GET /items query parameter kind', message: 'parameter removed' },
  },
  {
    name: 'a request property is removed',
    change: (doc) => delete createItem(doc).properties.note,
    expected: { location: 'POST /items request body (application/json): note', message: 'property removed' },
  },
  {
    name: 'an optional request property becomes required',
    change: (doc) => createItem(doc).required.push('note'),
    expected: { location: 'POST /items request body (application/json): note', message: 'property became required' },
  },
  {
    name: 'a required request property is added',
    change: (doc) => {
      createItem(doc).properties.owner = { type: 'string' };
      createItem(doc).required.push('owner');
    },
    expected: { location: 'POST /items request body (application/json): owner', message: 'new required property' },
  },
  {
    name: 'a value is removed from an enum that requests use',
    change: (doc) => (kind(doc).enum = ['A']),
    expected: { location: 'POST /items request body (application/json): kind', message: 'enum value "B" removed' },
  },
  {
    name: 'the same enum narrowing reaches a query parameter',
    change: (doc) => (kind(doc).enum = ['A']),
    expected: { location: 'GET /items query parameter kind', message: 'enum value "B" removed' },
  },
  {
    name: 'a maxLength is lowered',
    change: (doc) => (createItem(doc).properties.name = { ...nameSchema(doc), maxLength: 40 }),
    expected: { location: 'POST /items request body (application/json): name', message: 'maxLength lowered from 50 to 40' },
  },
  {
    name: 'a minLength is raised',
    change: (doc) => (createItem(doc).properties.name = { ...nameSchema(doc), minLength: 2 }),
    expected: { location: 'POST /items request body (application/json): name', message: 'minLength raised from 1 to 2' },
  },
  {
    name: 'a parameter maximum is lowered',
    change: (doc) => (page(doc).schema.maximum = 100),
    expected: { location: 'GET /items query parameter page', message: 'maximum lowered from 1000 to 100' },
  },
  {
    name: 'a limit is added where there was none',
    change: (doc) => (createItem(doc).properties.note = { type: ['string', 'null'], maxLength: 200 }),
    expected: { location: 'POST /items request body (application/json): note', message: 'maxLength 200 added' },
  },
  {
    name: 'a pattern changes',
    change: (doc) => (createItem(doc).properties.name = { ...nameSchema(doc), pattern: '^[a-z0-9]+$' }),
    expected: { location: 'POST /items request body (application/json): name', message: 'pattern changed from "^[a-z]+$" to "^[a-z0-9]+$"' },
  },
  {
    name: 'a format is added',
    change: (doc) => (createItem(doc).properties.name = { ...nameSchema(doc), format: 'email' }),
    expected: { location: 'POST /items request body (application/json): name', message: 'format "email" added' },
  },
  {
    name: 'an array item limit is lowered',
    change: (doc) => (createItem(doc).properties.tags = { type: 'array', items: { type: 'string', maxLength: 5 } }),
    expected: { location: 'POST /items request body (application/json): tags[]', message: 'maxLength lowered from 10 to 5' },
  },
  {
    name: 'a request field no longer accepts null',
    change: (doc) => (createItem(doc).properties.note = { type: 'string' }),
    expected: { location: 'POST /items request body (application/json): note', message: 'null no longer accepted' },
  },
  {
    name: 'a request field changes type',
    change: (doc) => (createItem(doc).properties.name = { type: 'integer' }),
    expected: { location: 'POST /items request body (application/json): name', message: 'string no longer accepted' },
  },
  {
    name: 'a parameter default changes',
    change: (doc) => (page(doc).schema.default = 2),
    expected: { location: 'GET /items query parameter page', message: 'default changed from 1 to 2' },
  },
  {
    name: 'a request object stops accepting additional properties',
    before: (doc) => (createItem(doc).additionalProperties = undefined),
    change: (doc) => (createItem(doc).additionalProperties = false),
    expected: { location: 'POST /items request body (application/json)', message: 'no longer accepts additional properties' },
  },
  {
    name: 'an optional request body becomes required',
    before: (doc) => (defined(postItem(doc).requestBody).required = false),
    change: (doc) => (defined(postItem(doc).requestBody).required = true),
    expected: { location: 'POST /items request body', message: 'request body became required' },
  },
  {
    name: 'a request media type is no longer accepted',
    change: (doc) => {
      const body = defined(postItem(doc).requestBody);
      body.content = { 'application/x-www-form-urlencoded': defined(body.content['application/json']) };
    },
    expected: { location: 'POST /items request body', message: 'media type application/json no longer accepted' },
  },
  {
    name: 'an anonymous operation starts to require authentication',
    change: (doc) => delete postItem(doc).security,
    expected: { location: 'POST /items', message: 'now requires authentication' },
  },
  {
    name: 'a response property is removed',
    change: (doc) => delete item(doc).properties.name,
    expected: { location: 'GET /items/{itemId} response 200 (application/json): name', message: 'property removed' },
  },
  {
    name: 'a response property is no longer always present',
    change: (doc) => (item(doc).required = item(doc).required.filter((name) => name !== 'kind')),
    expected: { location: 'GET /items/{itemId} response 200 (application/json): kind', message: 'no longer always present' },
  },
  {
    name: 'a response field may now be null',
    change: (doc) => (item(doc).properties.name = { type: ['string', 'null'] }),
    expected: { location: 'GET /items response 200 (application/json): items[].name', message: 'may now be null' },
  },
  {
    name: 'a response map may now hold numbers',
    change: (doc) => (item(doc).properties.meta = { type: 'object', additionalProperties: { type: ['string', 'number'] } }),
    expected: { location: 'GET /items/{itemId} response 200 (application/json): meta{}', message: 'may now be number' },
  },
  {
    name: 'a success status changes',
    change: (doc) => {
      const responses = postItem(doc).responses;
      responses['200'] = defined(responses['201']);
      delete responses['201'];
    },
    expected: { location: 'POST /items response 201', message: 'success status removed' },
  },
  {
    name: 'a response header is removed',
    change: (doc) => (defined(listItems(doc).responses['200']).headers = {}),
    expected: { location: 'GET /items response 200', message: 'header X-Total removed' },
  },
];

const additions: Case[] = [
  {
    name: 'a path and operation are added',
    change: (doc) => (doc.paths['/tags'] = { get: { operationId: 'listTags', responses: { '200': { description: 'Tags.' } } } }),
  },
  {
    name: 'an operation is added to an existing path',
    change: (doc) => (defined(doc.paths['/items/{itemId}']).put = { operationId: 'updateItem', responses: { '200': { description: 'Ok.' } } }),
  },
  {
    name: 'an optional query parameter is added',
    change: (doc) => defined(listItems(doc).parameters).push({ name: 'owner', in: 'query', required: false, schema: { type: 'string' } }),
  },
  {
    name: 'an optional request property is added',
    change: (doc) => (createItem(doc).properties.colour = { type: 'string', maxLength: 20 }),
  },
  {
    name: 'a response property is added',
    change: (doc) => {
      item(doc).properties.createdAt = { type: 'string', format: 'date-time' };
      item(doc).required.push('createdAt');
    },
  },
  {
    // Also a response enum gaining a value: enums are open (see the file comment of the check).
    name: 'an enum gains a value, in requests and responses alike',
    change: (doc) => defined(kind(doc).enum).push('C'),
  },
  {
    name: 'limits are loosened and a pattern dropped',
    change: (doc) => (createItem(doc).properties.name = { type: 'string', maxLength: 100 }),
  },
  {
    name: 'a required request property becomes optional',
    change: (doc) => (createItem(doc).required = []),
  },
  {
    name: 'a request field starts to accept null',
    change: (doc) => (createItem(doc).properties.name = { ...nameSchema(doc), type: ['string', 'null'] }),
  },
  {
    name: 'an error status is added',
    change: (doc) => (postItem(doc).responses['409'] = { description: 'Conflict.' }),
  },
  {
    name: 'a response header is added',
    change: (doc) => (defined(defined(listItems(doc).responses['200']).headers)['X-Next'] = { schema: { type: 'string' } }),
  },
  {
    name: 'a path parameter is renamed',
    change: (doc) => {
      const path = defined(doc.paths['/items/{itemId}']);
      path.parameters = defined(path.parameters).map((parameter) => ({ ...parameter, name: 'id' }));
      doc.paths['/items/{id}'] = path;
      delete doc.paths['/items/{itemId}'];
    },
  },
  {
    name: 'an inline schema moves into components unchanged',
    change: (doc) => {
      doc.components.schemas.Name = nameSchema(doc);
      createItem(doc).properties.name = { $ref: '#/components/schemas/Name' };
    },
  },
  {
    name: 'descriptions and examples change',
    change: (doc) => (createItem(doc).properties.name = { ...nameSchema(doc), description: 'The name.', examples: ['abc'] }),
  },
];

describe('OpenAPI breaking-change check', () => {
  it('when the document is unchanged, then nothing is reported', () => {
    expect(findBreakingChanges(fixture(), fixture())).toEqual([]);
  });

  it.each(breaking)('when $name, then it is reported there', (testCase) => {
    expect(compare(testCase)).toContainEqual({
      location: expect.stringContaining(testCase.expected.location),
      message: expect.stringContaining(testCase.expected.message),
    });
  });

  it.each(additions)('when $name, then nothing is reported', (testCase) => {
    expect(compare(testCase)).toEqual([]);
  });

  it('when a schema refers to itself, then the comparison ends and still finds the change', () => {
    const tree = (maxLength: number) => {
      const doc = fixture();
      doc.components.schemas.Node = {
        type: 'object',
        properties: { label: { type: 'string', maxLength }, children: { type: 'array', items: { $ref: '#/components/schemas/Node' } } },
      };
      createItem(doc).properties.tree = { $ref: '#/components/schemas/Node' };
      return doc;
    };
    expect(findBreakingChanges(tree(10), tree(10))).toEqual([]);
    expect(findBreakingChanges(tree(10), tree(5))).toContainEqual({
      location: 'POST /items request body (application/json): tree.label',
      message: 'maxLength lowered from 10 to 5',
    });
  });
});
