// express-openapi-validator with its route lookup compiled once. The library's metadata step
// (`applyOpenApiMetadata` → `lookupRoute`) calls path-to-regexp for every route of the spec on
// every request until one matches: 13-18% of the CPU of a warm authenticated GET in profiles.
// Upstream caches the compiled matchers (cdimascio/express-openapi-validator#1217) in a version
// not yet released. Until then this module swaps in a metadata step that does exactly what the
// library's does, in the same route order and with the same errors, over matchers compiled once.
// Everything else (spec loading, request and response validation) is the library's, with
// openapi.yaml as its source. Remove this module when a release contains the upstream fix, and
// two start-up patches below (each says what it saves) when the library stops doing that work.
import { createRequire } from 'node:module';
import { parse as legacyUrlParse } from 'node:url';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { OpenApiValidatorOpts } from 'express-openapi-validator/dist/framework/types.d.ts';
import type { OpenApiContext } from 'express-openapi-validator/dist/framework/openapi.context.d.ts';

const require = createRequire(import.meta.url);
// The library's own modules, so that errors are its classes and paths are compiled by the very
// path-to-regexp it depends on.
const validatorModule = require('express-openapi-validator/dist/openapi.validator.js') as {
  OpenApiValidator: new (options: OpenApiValidatorOpts) => object;
};
const specLoaderModule = require('express-openapi-validator/dist/framework/openapi.spec.loader.js') as {
  OpenApiSpecLoader: new (options: { apiDoc: OpenApiValidatorOpts['apiSpec']; validateApiSpec?: boolean; $refParser?: unknown }) => { load(): Promise<unknown> };
};
const errors = require('express-openapi-validator/dist/framework/types.js') as {
  NotFound: new (err: { path: string; message: string }) => Error;
  MethodNotAllowed: new (err: { path: string; message: string; headers: Record<string, string> }) => Error;
  BadRequest: new (err: { path: string; message: string }) => Error;
};
const preprocessorModule = require('express-openapi-validator/dist/middlewares/parsers/schema.preprocessor.js') as {
  httpMethods: Set<string>;
  SchemaPreprocessor: { prototype: SchemaPreprocessorInternals };
};
const httpMethods = preprocessorModule.httpMethods;

/** What the patch below touches of the library's SchemaPreprocessor and of its ajv instance. */
interface SchemaPreprocessorInternals {
  ajv: { schemas: Record<string, unknown>; refs: Record<string, unknown> };
  resolvedSchemaCache: Map<string, unknown>;
  resolveSchema: (this: SchemaPreprocessorInternals, schema: unknown) => unknown;
}

// The schema preprocessor, run once per spec load, resolves every $ref it meets with
// `ajv.getSchema(ref).schema`: it compiles a validator for the referenced schema only to read back
// the schema object it was compiled from. That ajv instance is the preprocessor's own and its
// validators are never used (requests are validated by other instances, compiled per route at the
// first request), yet compiling them was the largest part of the start-up after module loading
// (about 150 ms of one core). A schema that ajv already holds under the ref (each of
// components/schemas is added under `#/components/schemas/<name>`) is read from ajv's table as it
// is; any other ref goes the library's way.
const libraryResolveSchema = preprocessorModule.SchemaPreprocessor.prototype.resolveSchema;
preprocessorModule.SchemaPreprocessor.prototype.resolveSchema = function (this: SchemaPreprocessorInternals, schema: unknown): unknown {
  const ref = (schema as { $ref?: unknown } | null | undefined)?.$ref;
  if (typeof ref === 'string' && !this.resolvedSchemaCache.has(ref)) {
    const held = this.ajv.schemas[ref] ?? this.ajv.refs[ref];
    if (typeof held === 'object' && held !== null && 'schema' in held) {
      this.resolvedSchemaCache.set(ref, held.schema);
      return held.schema;
    }
  }
  return libraryResolveSchema.call(this, schema);
};

// The library builds an OpenAPISchemaValidator at every spec load, and with it compiles the whole
// OpenAPI 3 meta-schema with ajv, even when `validateApiSpec: false` means it is never used: a
// tenth of the start-up's CPU (about 130 ms of one core on the reference machine). Replaced, in the
// module object that framework/index.js reads it from, by one that compiles only when asked to
// validate the spec.
const schemaValidatorModule = require('express-openapi-validator/dist/framework/openapi.schema.validator.js') as {
  OpenAPISchemaValidator: new (options: { version: string; validateApiSpec: boolean }) => { validate(document: unknown): { errors: unknown[] } };
};
const LibrarySchemaValidator = schemaValidatorModule.OpenAPISchemaValidator;
schemaValidatorModule.OpenAPISchemaValidator = class {
  #validator: InstanceType<typeof LibrarySchemaValidator> | undefined;
  constructor(options: { version: string; validateApiSpec: boolean }) {
    this.#validator = options.validateApiSpec ? new LibrarySchemaValidator(options) : undefined;
  }
  validate(document: unknown): { errors: unknown[] } {
    this.#validator ??= new LibrarySchemaValidator({ version: (document as { openapi: string }).openapi, validateApiSpec: true });
    return this.#validator.validate(document);
  }
};
// The request validator parses every request's URL with the legacy `url.parse()`
// (req.parameter.mutator.js). Node 24's url.parse() warns once (DEP0169) when called from outside
// node_modules, and until it has warned it asks, on every call from inside node_modules, whether
// the caller is there by capturing a stack trace: ~8 µs per request in the server's call depth,
// 4-5 % of a warm authenticated GET's CPU in profiles. One call here, from outside node_modules,
// settles that: the warning is counted as given (muted with `noDeprecation` for the duration;
// our own code does not call url.parse: @typescript-eslint/no-deprecated reports it) and later
// calls skip the check.
const deprecationsMuted = process.noDeprecation;
process.noDeprecation = true;
try {
  // eslint-disable-next-line @typescript-eslint/no-deprecated -- the one call, made for the reason above
  legacyUrlParse('/');
} finally {
  process.noDeprecation = deprecationsMuted;
}

const pathToRegexp = (
  createRequire(require.resolve('express-openapi-validator'))('path-to-regexp') as {
    pathToRegexp: (path: string, options: { sensitive: boolean; strict: boolean }) => { regexp: RegExp; keys: { name: string }[] };
  }
).pathToRegexp;

type PathItem = Record<string, unknown>;
interface ApiDoc {
  paths: Record<string, PathItem>;
}

interface CompiledRoute {
  expressRoute: string;
  openApiRoute: string;
  pathItem: PathItem;
  responsePathItem: PathItem | undefined;
  regexp: RegExp;
  paramNames: string[];
}

/**
 * The validator's middleware chain, as `OpenApiValidator.middleware(options)` builds it, except
 * that each request's route is found with matchers compiled at the first request.
 */
export function createOpenApiValidation(options: OpenApiValidatorOpts): RequestHandler[] {
  const validator = new validatorModule.OpenApiValidator(options) as { metadataMiddleware?: unknown; installMiddleware?: unknown };
  // A private method of the library; fail at start-up, not per request, if an upgrade renames it.
  if (typeof validator.metadataMiddleware !== 'function' || typeof validator.installMiddleware !== 'function') {
    throw new Error('express-openapi-validator changed: metadataMiddleware is gone; remove src/controllers/rest/openapi-validation.ts');
  }
  validator.metadataMiddleware = (context: OpenApiContext, responseApiDoc: ApiDoc | undefined) => precompiledMetadata(context, responseApiDoc);
  const spec = new specLoaderModule.OpenApiSpecLoader({
    apiDoc: options.apiSpec,
    validateApiSpec: options.validateApiSpec,
    $refParser: options.$refParser,
  }).load();
  return (validator.installMiddleware as (spec: Promise<unknown>) => RequestHandler[])(spec);
}

/** `applyOpenApiMetadata` of express-openapi-validator 5.6.2, with the matchers compiled once. */
function precompiledMetadata(context: OpenApiContext, responseApiDoc: ApiDoc | undefined): RequestHandler {
  const apiDoc = context.apiDoc as unknown as ApiDoc;
  // Keyed by the app's routing flags, which the library reads per request.
  const compiledByFlags = new Map<string, CompiledRoute[]>();
  const compile = (sensitive: boolean, strict: boolean): CompiledRoute[] =>
    Object.entries(context.expressRouteMap).map(([expressRoute, methods]) => {
      const openApiRoute = context.routePair(expressRoute).openApiRoute;
      const pathKey = openApiRoute.substring((methods as { basePath: string }).basePath.length);
      const { regexp, keys } = pathToRegexp(expressRoute, { sensitive, strict });
      return {
        expressRoute,
        openApiRoute,
        pathItem: apiDoc.paths[pathKey]!,
        responsePathItem: responseApiDoc?.paths[pathKey],
        regexp,
        paramNames: keys.map((key) => key.name),
      };
    });

  const lookupRoute = (req: Request) => {
    const path = context.useRequestUrl ? req.url.split('?')[0]! : req.originalUrl.split('?')[0]!;
    // HEAD is GET without the body (RFC 9110 9.3.2): every GET operation answers it, as Express
    // routes it to the GET handler.
    const method = req.method === 'HEAD' ? 'get' : req.method.toLowerCase();
    const sensitive = req.app.enabled('case sensitive routing');
    const strict = req.app.enabled('strict routing');
    const flags = `${sensitive}:${strict}`;
    let routes = compiledByFlags.get(flags);
    if (routes === undefined) compiledByFlags.set(flags, (routes = compile(sensitive, strict)));
    for (const route of routes) {
      const matched = route.regexp.exec(path);
      if (matched === null) continue;
      const pathParams: Record<string, string> = {};
      try {
        for (let i = 0; i < route.paramNames.length; i++) pathParams[route.paramNames[i]!] = decodeURIComponent(matched[i + 1]!);
      } catch {
        throw new errors.BadRequest({ path: req.path, message: `malformed uri'` });
      }
      return { route, pathParams, schema: route.pathItem[method], responseSchema: route.responsePathItem?.[method] };
    }
    return null;
  };

  return (req: Request, _res: Response, next: NextFunction): void => {
    const path = req.path.startsWith(req.baseUrl) ? req.path : `${req.baseUrl}/${req.path}`;
    if (context.shouldIgnoreRoute(path)) return next();
    const matched = lookupRoute(req);
    if (matched !== null) {
      const { route, pathParams, schema } = matched;
      if (!schema) {
        if (context.ignoreUndocumented) return next();
        throw new errors.MethodNotAllowed({
          path: req.path,
          message: `${req.method} method not allowed`,
          headers: {
            Allow: Object.keys((context.openApiRouteMap as Record<string, object>)[route.openApiRoute]!)
              .filter((key) => httpMethods.has(key.toLowerCase()))
              .join(', '),
          },
        });
      }
      const openapi: Record<string, unknown> = {
        expressRoute: route.expressRoute,
        openApiRoute: route.openApiRoute,
        pathParams,
        // As written (percent-decoded): the validator coerces pathParams in place, and what
        // notation a number came in matters after (rest-app.ts, refuseUnusableParameters).
        rawPathParams: { ...pathParams },
        schema,
        serial: context.serial,
      };
      (req as unknown as { openapi: unknown }).openapi = openapi;
      req.params = pathParams;
      if (responseApiDoc) openapi._responseSchema = matched.responseSchema;
    } else if (context.isManagedRoute(path) && !context.ignoreUndocumented) {
      throw new errors.NotFound({ path: req.path, message: 'not found' });
    }
    next();
  };
}
