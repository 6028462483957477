// RPC requests are checked against the same JSON Schemas as REST requests, taken from
// openapi.yaml, so the two protocols cannot drift apart. The mapping is by convention:
// - a request message whose name is a schema in components/schemas (RegisterRequest, …) has its
//   set fields validated as that schema's JSON object, enums by their REST names (ADMIN, …);
// - a field that schema does not describe but that is named like a parameter in
//   components/parameters (userId, page, …) is validated against that parameter's schema, and
//   must be set when the parameter is required and the field is not proto3 `optional`.
// proto3 cannot tell an empty string or a zero from "not sent", so such fields count as absent,
// which is what the schemas' `required` lists then catch.
// Before any schema, every request meets the edge's own rules (edge-input.ts): no NUL or unpaired
// surrogate in any string, no enum number or field the message does not declare.
import { isFieldSet, type DescField, type DescMessage, type Message } from '@bufbuild/protobuf';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { ValidationError, type FieldErrors } from '../../domain/errors.ts';
import { findMessageProblems } from '../edge-input.ts';

// ajv-formats is CommonJS with a default export that TypeScript sees one level down.
const addFormats = addFormatsModule as unknown as typeof addFormatsModule.default;

/** The parts of an OpenAPI document the validator reads. */
export interface OpenApiComponents {
  components?: {
    schemas?: Record<string, unknown>;
    parameters?: Record<string, { name?: string; required?: boolean; schema?: unknown }>;
  };
}

/**
 * RPC request fields that REST carries in a header, not in the body or URL, so neither the body
 * schema nor a parameter describes them: each is validated against the schema named here.
 * (`expected_version` is REST's `If-Match` ETag, the user's version.)
 */
const HEADER_FIELDS: Readonly<Record<string, string>> = { expectedVersion: 'Version' };

interface ParameterRule {
  field: DescField;
  required: boolean;
  validate: ValidateFunction;
}

interface MessageRules {
  body: ValidateFunction | undefined;
  parameters: ParameterRule[];
}

export class RequestValidator {
  readonly #ajv: Ajv2020;
  readonly #parameters: Map<string, { key: string; required: boolean }>;
  readonly #schemas: Map<string, Set<string>>;
  readonly #rules = new Map<string, MessageRules>();

  constructor(document: OpenApiComponents) {
    // validateSchema: false, as the REST validator's validateApiSpec: false: openapi.yaml is
    // checked where it changes (redocly lint, the contract checks), and checking its components
    // against the 2020-12 meta-schema here compiled that meta-schema at every start (about 70 ms).
    this.#ajv = new Ajv2020({ allErrors: true, strict: false, validateSchema: false });
    addFormats(this.#ajv);
    this.#ajv.addSchema({ $id: 'openapi', components: document.components ?? {} });
    this.#schemas = new Map(
      Object.entries(document.components?.schemas ?? {}).map(([name, schema]) => [
        name,
        new Set(Object.keys((schema as { properties?: Record<string, unknown> }).properties ?? {})),
      ]),
    );
    this.#parameters = new Map(
      Object.entries(document.components?.parameters ?? {}).flatMap(([key, parameter]) =>
        parameter.name === undefined ? [] : [[parameter.name, { key, required: parameter.required === true }]],
      ),
    );
  }

  /** Throws a ValidationError naming each offending field (by its proto name). */
  check(desc: DescMessage, message: Message): void {
    const rules = this.#rulesFor(desc);
    // The edge's rules name the actual problem (a NUL), where a schema would say only that a
    // pattern failed; they come first and, per field, win.
    const details: FieldErrors = findMessageProblems(desc, message);
    const body: Record<string, unknown> = {};

    for (const field of desc.fields) {
      const parameter = rules.parameters.find((rule) => rule.field === field);
      const set = isFieldSet(message, field);
      if (parameter !== undefined) {
        if (!set) {
          if (parameter.required) details[field.name] ??= 'is required';
          continue;
        }
        if (!parameter.validate(jsonValue(field, message))) {
          details[field.name] ??= firstMessage(parameter.validate.errors);
        }
      } else if (set) {
        body[field.jsonName] = jsonValue(field, message);
      }
    }

    if (rules.body !== undefined && !rules.body(body)) {
      for (const error of rules.body.errors ?? []) {
        const jsonName = fieldOf(error);
        const name = desc.fields.find((field) => field.jsonName === jsonName)?.name ?? (jsonName || 'request');
        details[name] ??= error.message ?? 'is invalid';
      }
    }
    if (Object.keys(details).length > 0) throw new ValidationError('Validation failed', details);
  }

  #rulesFor(desc: DescMessage): MessageRules {
    let rules = this.#rules.get(desc.typeName);
    if (rules === undefined) {
      rules = {
        body: this.#schemas.has(desc.name) ? this.#ajv.compile({ $ref: `openapi#/components/schemas/${desc.name}` }) : undefined,
        parameters: desc.fields.flatMap((field) => {
          const headerSchema = HEADER_FIELDS[field.jsonName];
          if (headerSchema !== undefined && this.#schemas.has(headerSchema)) {
            return [{ field, required: false, validate: this.#ajv.compile({ $ref: `openapi#/components/schemas/${headerSchema}` }) }];
          }
          const parameter = this.#parameters.get(field.jsonName);
          // A property of the request's own schema is validated there, even when a query
          // parameter elsewhere shares its name (UpdateUserStatusRequest.status, say).
          if (parameter === undefined || this.#schemas.get(desc.name)?.has(field.jsonName) === true) return [];
          const validate = this.#ajv.compile({ $ref: `openapi#/components/parameters/${parameter.key}/schema` });
          return [{ field, required: parameter.required && !field.proto.proto3Optional, validate }];
        }),
      };
      this.#rules.set(desc.typeName, rules);
    }
    return rules;
  }
}

/** A field's value as REST spells it: enums by name without the proto prefix. */
function jsonValue(field: DescField, message: Message): unknown {
  const value: unknown = (message as unknown as Record<string, unknown>)[field.localName];
  if (field.fieldKind === 'enum' && typeof value === 'number') {
    return field.enum.values.find((candidate) => candidate.number === value)?.localName ?? value;
  }
  return value;
}

/** The top-level property an ajv error is about. */
function fieldOf(error: ErrorObject): string {
  if (error.keyword === 'required') {
    const missing = (error.params as { missingProperty?: unknown }).missingProperty;
    return typeof missing === 'string' ? missing : '';
  }
  return error.instancePath.split('/')[1] ?? '';
}

function firstMessage(errors: ErrorObject[] | null | undefined): string {
  return errors?.[0]?.message ?? 'is invalid';
}
