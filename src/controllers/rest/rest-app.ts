import compression from 'compression';
import express, { type Express, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { isUtf8 } from 'node:buffer';
import { parse as parseQuery } from 'node:querystring';
import type { IncomingMessage } from 'node:http';
import type { OpenApiValidatorOpts } from 'express-openapi-validator/dist/framework/types.d.ts';
import type { components } from '../../../gen/openapi/schema.d.ts';
import { compileTrust, type ClientAddressResolver, type TrustProxySetting } from '../../infrastructure/client-address.ts';
import type { Logger } from '../../infrastructure/logger.ts';
import type { RateLimiter } from '../../infrastructure/rate-limiter.ts';
import type { ServiceClients } from './service-call.ts';
import { addAuditRoutes } from './audit-routes.ts';
import { addAuthRoutes } from './auth-routes.ts';
import { createConsoleRoutes } from './console-routes.ts';
import { createDocsRoutes } from './docs-routes.ts';
import { ValidationError } from '../../domain/errors.ts';
import { findQueryProblems, findUnstorableText, framingBound, hasBody, noFieldErrors, queryPairsOver, repeatedJsonKey, REPEATED_REFUSED } from '../edge-input.ts';
import { createOpenApiValidation } from './openapi-validation.ts';
import { closeAfterAnswer } from '../close-after-answer.ts';
import { createErrorHandler, INVALID_UTF8, notFoundHandler } from './error-handler.ts';
import { rateLimit } from './rate-limit-middleware.ts';
import { requestContext, routeMatcher } from './request-context.ts';
import type { Metrics } from '../../infrastructure/metrics.ts';
import type { Tracing } from '../../infrastructure/tracing.ts';
import { createSystemRoutes } from './system-routes.ts';
import type { ReadinessCheck } from '../../rpc/readiness.ts';
import { addUserRoutes } from './user-routes.ts';
import { varyByEncoding } from './entity-tag.ts';
import { isPrecoded } from './static-body.ts';

/** The probes, as the system router answers them: any case, with or without a trailing slash. */
const PROBES = /^\/(?:health|ready)\/?$/i;

/*
 * The paths of the routers that are not API operations, as Express's routers match them: any
 * case, with or without a trailing slash. Each router is entered only for its own paths, so an
 * API request no longer walks the console's, the reference's and the probes' sixteen routes
 * (a pattern match and the router's bookkeeping each) before reaching its own.
 */
const CONSOLE_PATHS = /^\/console(?:\/|$)/i;
const DOCS_PATHS = /^\/(?:docs|openapi\.yaml)(?:\/|$)/i;
const SYSTEM_PATHS = /^\/(?:health|ready|public\/info)(?:\/|$)/i;
const FAVICON_PATH = /^\/favicon\.ico$/i;
/** The API operations' paths, which no cache may keep (as Express matched the `/api/v1` mount). */
const API_PATHS = /^\/api\/v1(?:\/|$)/i;
/** The console's and the reference's pages, whose bodies carry strong tags of their own (entity-tag.ts). */
const STATIC_PATHS = new RegExp(`${CONSOLE_PATHS.source}|${DOCS_PATHS.source}`, 'i');

/** `router` for the paths `paths` matches; every other request goes past it untouched. */
function onlyFor(paths: RegExp, router: RequestHandler): RequestHandler {
  return (req, res, next) => {
    if (paths.test(req.path)) {
      router(req, res, next);
      return;
    }
    next();
  };
}

/**
 * `handlers` run one after another as a single layer of the app's router, as Express would run
 * them as layers of their own: a handler that throws, rejects or passes an error ends the
 * sequence with that error (the router then looks for the error handler), `next('route')` goes
 * on to the next handler, `next('router')` leaves the router. Express's router pays for every
 * layer a request passes (a match, a params object and a closure, and its URL read again): for
 * the twenty in front of the routes that was 17 KB of a warm GET user's 74 KB of garbage, the
 * largest source of it (sampling heap profile under load), and its scavenges set the tail
 * latency.
 */
function inSequence(handlers: readonly RequestHandler[]): RequestHandler {
  for (const handler of handlers) {
    // An error handler (four parameters) would be skipped by the router in this place; here it
    // would be called as a request handler.
    if (handler.length > 3) throw new Error(`inSequence takes request handlers, not error handlers: ${handler.name}`);
  }
  return (req, res, done) => {
    let index = 0;
    const rejected = (rejection: unknown): void => {
      if (rejection) done(rejection);
      else done(new Error('Rejected promise'));
    };
    const step = (error?: unknown): void => {
      // As the router reads it: any falsy value is no error, and 'route' skips only route handlers.
      if (Boolean(error) && error !== 'route') {
        done(error);
        return;
      }
      const handler = handlers[index++];
      if (handler === undefined) {
        done();
        return;
      }
      try {
        const returned: unknown = handler(req, res, step);
        if (returned instanceof Promise) returned.then(undefined, rejected);
      } catch (thrown) {
        step(thrown);
      }
    };
    step();
  };
}

export interface RestAppOptions {
  apiSpecPath: string;
  /**
   * The document at `apiSpecPath`, already parsed (the validator then skips reading and parsing
   * it, a tenth of a second at start-up); the validator changes it in place, so it must be a copy
   * nobody else uses.
   */
  apiSpec?: object | undefined;
  /** The service layer: clients over an in-process or a network transport. */
  services: ServiceClients;
  logger: Logger;
  rateLimiter: RateLimiter | undefined;
  trustProxy: TrustProxySetting;
  /** The client-address rule, the same instance the RPC facade uses. */
  resolveClient: ClientAddressResolver;
  /** Whether a socket peer is a proxy whose trace context is continued (TRACE_TRUSTED_PROXIES). */
  traceTrusted: (socketAddress: string | undefined) => boolean;
  bodyLimitBytes: number;
  validateResponses: boolean;
  exposeInternals: boolean;
  info: components['schemas']['PublicInfo'];
  readiness: Record<string, ReadinessCheck>;
  /** Where request counts and latencies go, when metrics are on. */
  metrics?: Metrics | undefined;
  /** Where server spans go, when tracing is on. */
  tracing?: Tracing | undefined;
}

/**
 * The REST facade: spec §5's routes, validated against openapi.yaml, over the service layer.
 * CORS is applied in front of it, shared with the RPC handlers (see src/app.ts).
 */
export function createRestApp(options: RestAppOptions): Express {
  const app = express();
  app.disable('x-powered-by');
  // Express would hash every body it sends into a weak ETag. Every API answer carries its own
  // requestId and timestamp, so that tag never matches, and hashing a page of users cost ~10 µs
  // of each request. Users carry their version as tag (envelope.ts); the static bodies carry one
  // computed once (entity-tag.ts).
  app.set('etag', false);
  // Express's own view (req.ip, req.secure) follows the same predicate as the edge's resolver.
  app.set('trust proxy', compileTrust(options.trustProxy));
  // The query is read whole. Express's parser (node:querystring) stops after 1 000 pairs, empty
  // ones counted, and the validator sees only what it read: behind 1 000 `&`, a filter was dropped
  // unseen (a listing by role answered every user), an unknown parameter or a repeat passed, and
  // `role=GUEST&…&role=ADMIN` was read as GUEST where a proxy reading the last one saw ADMIN
  // (helper 205). Beyond QUERY_PAIRS_MAX pairs it is refused unread (refuseLongQuery).
  app.set('query parser', (text: string) => parseQuery(text, undefined, undefined, { maxKeys: 0 }));

  const contractPaths = (options.apiSpec as { paths?: Record<string, unknown> } | undefined)?.paths ?? {};
  const ahead: RequestHandler[] = [];
  ahead.push(requestContext(options.logger, options.resolveClient, options.metrics, options.tracing, options.traceTrusted, routeMatcher(contractPaths)));
  // Every API answer is about a caller, or to one: no cache may keep it, and a browser must not
  // answer a later request from it (after logout, say). ETags and If-None-Match still work. Set
  // first, so that every answer has it, refusals included (a 400, 404, 413 or 429 had none: a
  // shared cache may keep a 404 by heuristics; helper 97).
  ahead.push((req, res, next) => {
    if (API_PATHS.test(req.path)) res.setHeader('cache-control', 'no-store');
    next();
  });
  ahead.push(onlyFor(STATIC_PATHS, varyByEncoding));
  // The static files come coded already, or must go as they are (see StaticBody).
  ahead.push(compression({ filter: (req, res) => !isPrecoded(res) && compression.filter(req, res) }));

  // The admin console's page and assets, with their own strict CSP: static bytes held in memory,
  // outside the API's rate limit (the console's RPCs count against it like any client's).
  const consoleRoutes = createConsoleRoutes();
  ahead.push(
    onlyFor(CONSOLE_PATHS, (req, res, next) => {
      res.locals.unmetered = true;
      consoleRoutes(req, res, next);
    }),
  );

  // The API reference (/docs, /openapi.yaml, /docs/proto/): pages, not API operations, so ahead
  // of the body parser and the OpenAPI validator; static bytes held in memory, outside the rate
  // limit as the console's are. Charged, one look at /docs cost its reader five requests (the
  // page, two scripts, the contract, the icon), so about twenty looks an hour locked an address
  // out of the API and the console's sign-in (helper 212). A path under them that names no page
  // goes on, charged, to the API's 404.
  const docsRoutes = createDocsRoutes(options.apiSpecPath);
  ahead.push(
    onlyFor(DOCS_PATHS, (req, res, next) => {
      res.locals.unmetered = true;
      docsRoutes(req, res, (error?: unknown) => {
        res.locals.unmetered = false;
        next(error);
      });
    }),
  );

  // Browsers ask every origin they show a document of for its icon, the API's own 403 refusals
  // and JSON answers included: a 404 there was charged, once per window a hostile page opened on
  // the API (helper 217). No icon, unmetered, for a day.
  ahead.push(
    onlyFor(FAVICON_PATH, (req, res, next) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        next();
        return;
      }
      res.locals.unmetered = true;
      res.status(204).setHeader('cache-control', 'public, max-age=86400');
      res.end();
    }),
  );

  if (options.rateLimiter !== undefined) {
    // Probes are exempt: an orchestrator polling them must never be throttled. A request with a
    // body is no probe, and is charged before its body is parsed: POSTed to /health, 137 bytes of
    // gzip inflating to 102 KB of nested arrays cost 64-78 ms each, unlimited (helper 203).
    const limit = rateLimit(options.rateLimiter);
    // Nor is one with a query: a probe takes none, and the query's checks cost what its client
    // makes them cost (helper 209: `/health?` with 16 KiB of `%FF&`, 80 ms of CPU each, unlimited).
    ahead.push((req, res, next) => {
      if (!PROBES.test(req.path) || hasBody(req) || req.originalUrl.includes('?')) return limit(req, res, next);
      res.locals.unmetered = true;
      next();
    });
  }
  ahead.push(refuseLongQuery);

  // A compressed body is inflated by body-parser (bounded by the limit after inflation); one cut
  // short or garbled is a 400 (error-handler.ts). A body that is not UTF-8 would be decoded with
  // U+FFFD in place of what was sent: refused, as the RPC facade refuses it.
  // A body declared larger than the limit is refused before a byte of it is read: body-parser
  // reads it all (99 MB) before passing on its 413 (helper 97). The server does not invite it
  // with 100 Continue either (server.ts).
  ahead.push((req, res, next) => {
    if (Number(req.headers['content-length']) > options.bodyLimitBytes) {
      closeAfterAnswer(req, res);
      throw tooLarge();
    }
    next();
  });
  ahead.push(jsonBodies(options.bodyLimitBytes));
  ahead.push(refuseRepeatedNames);
  // Before the schemas, so that a NUL is reported as such (as RPC reports it), not as a pattern
  // it also breaks; before authentication and any database work in any case.
  ahead.push(refuseUnstorableText);
  ahead.push(refuseUnclearQuery);
  ahead.push(
    ...createOpenApiValidation({
      apiSpec: (options.apiSpec as OpenApiValidatorOpts['apiSpec'] | undefined) ?? options.apiSpecPath,
      validateRequests: { allowUnknownQueryParameters: false, allErrors: true },
      validateResponses: options.validateResponses,
      validateSecurity: false,
      // openapi.yaml is checked where it changes (redocly lint and the contract checks in
      // npm test); checking it against the OpenAPI meta-schema at every start cost an eighth
      // of the start-up's CPU.
      validateApiSpec: false,
      // The formats as the RPC facade checks them (request-validator.ts): the validator's default,
      // `fast`, takes a `uri` with control characters in it, which `full` refuses.
      ajvFormats: { mode: 'full' },
    }),
  );
  ahead.push(refuseUnusableParameters);
  ahead.push(onlyFor(SYSTEM_PATHS, createSystemRoutes({ info: options.info, readiness: options.readiness })));
  app.use(inSequence(ahead));

  addUserRoutes(app, options.services);
  addAuthRoutes(app, options.services);
  addAuditRoutes(app, options.services);

  app.use(notFoundHandler);
  app.use(createErrorHandler({ logger: options.logger, exposeInternals: options.exposeInternals }));
  return app;
}

function tooLarge(): Error {
  return Object.assign(new Error('request entity too large'), { type: 'entity.too.large', status: 413 });
}

/**
 * express.json, and a body of no declared length (chunked) refused as soon as it passes the
 * limit: body-parser stops parsing there but reads the rest of the request to its end before it
 * passes on its 413, so a client that kept sending held the connection, read at full line rate,
 * until the request timeout, and got 408 after 60 s (helper 169: 19 MB read; 300 MB read in full
 * before the answer). The bytes counted are those sent: a compressed body is bounded after
 * inflation by body-parser, and sent, by the limit plus deflate's worst-case growth. Nothing more
 * is read; the answer says `Connection: close`, and the connection lingers (see closeAfterAnswer).
 */
function jsonBodies(limitBytes: number): RequestHandler {
  const parse: RequestHandler = express.json({ limit: limitBytes, strict: true, verify: refuseInvalidUtf8 });
  return (req, res, next) => {
    let refused = false;
    parse(req, res, (error?: unknown) => {
      if (!refused) next(error);
    });
    // body-parser attached its reader to the request synchronously, if it reads the body at all.
    if (req.headers['content-length'] !== undefined || req.listenerCount('data') === 0) return;
    const encoded = req.headers['content-encoding'] !== undefined && req.headers['content-encoding'] !== 'identity';
    const bound = encoded ? limitBytes + Math.ceil(limitBytes / 100) + 1024 : limitBytes;
    // And the bytes on the wire, framing included: chunk extensions and leading zeros in chunk
    // sizes pad a body without end (helper 180; server.ts, boundFraming).
    const { socket } = req;
    const wire = framingBound(limitBytes);
    const startRead = socket.bytesRead;
    let seen = 0;
    const count = (chunk: Buffer) => {
      seen += chunk.length;
      if ((seen <= bound && socket.bytesRead - startRead <= wire) || refused) return;
      refused = true;
      req.off('data', count);
      req.pause();
      closeAfterAnswer(req, res);
      next(tooLarge());
    };
    req.on('data', count);
  };
}

/** The raw (inflated) JSON body, kept by the parser's `verify` hook for the check after it. */
const RAW_JSON = Symbol('raw JSON body');
type WithRawJson = IncomingMessage & { [RAW_JSON]?: Buffer };

/**
 * body-parser's `verify` hook, on the raw (inflated) body: JSON comes in UTF-8 (RFC 8259 8.1),
 * and valid UTF-8. body-parser would also decode UTF-16 and UTF-32, guessing the byte order of
 * `utf-16` as no other decoder here does, so a check of the text (below) read another body than
 * the one parsed: a duplicate key slipped through and a bad escape was a 500 (found by the
 * re-attack on the check). Other charsets are 415, as Latin-1 already was.
 */
function refuseInvalidUtf8(req: IncomingMessage, _res: unknown, body: Buffer, charset: string): void {
  if (!/^utf-?8$/i.test(charset)) throw Object.assign(new Error('JSON must be UTF-8'), { type: 'charset.unsupported' });
  if (!isUtf8(body)) throw Object.assign(new Error('Request body is not valid UTF-8'), { type: INVALID_UTF8 });
  (req as WithRawJson)[RAW_JSON] = body;
}

/**
 * No object in a JSON body may give a name twice (JSON.parse keeps the last; Connect JSON refuses
 * it). Checked once the body has parsed, on the text that was parsed.
 */
function refuseRepeatedNames(req: Request, _res: Response, next: NextFunction): void {
  const raw = (req as WithRawJson)[RAW_JSON];
  if (raw !== undefined) {
    const repeated = repeatedJsonKey(raw.toString('utf8'));
    if (repeated !== undefined) throw new ValidationError('Validation failed', Object.assign(noFieldErrors(), { [repeated]: REPEATED_REFUSED }));
  }
  next();
}

/** NUL or an unpaired surrogate in the body or the query: 400 naming the field. */
function refuseUnstorableText(req: Request, _res: Response, next: NextFunction): void {
  const details = Object.assign(noFieldErrors(), findUnstorableText(req.query), findUnstorableText(req.body));
  if (Object.keys(details).length > 0) throw new ValidationError('Validation failed', details);
  next();
}

/** More query parameters than any operation takes (openapi.yaml's take a handful), with room to spare. */
export const QUERY_PAIRS_MAX = 64;

/**
 * A query of more pairs than any operation takes is refused before it is parsed. Read whole (see
 * the query parser above), 16 KiB of `&` cost 12.5 ms of CPU where a listing costs 3, and of
 * `%FF&` 80 ms (helper 209): the parser, the validator and the checks below each read every pair.
 */
function refuseLongQuery(req: Request, _res: Response, next: NextFunction): void {
  if (queryPairsOver(req.originalUrl, QUERY_PAIRS_MAX)) throw new ValidationError('Validation failed', { query: `at most ${QUERY_PAIRS_MAX} parameters` });
  next();
}

/**
 * A query string must say one thing: text that is not percent-encoded UTF-8 would reach the
 * schemas as U+FFFD (a search for `%FF<tag>` found a name holding U+FFFD), so it is refused
 * (findQueryProblems). And query names with brackets are refused as the unknown parameters they
 * are (openapi.yaml declares none): express-openapi-validator reads such a name as qs bracket
 * notation and deletes it from the query before its unknown-parameter check, so `?x_=[=1` on an
 * operation with no parameters was accepted, and `?a[b]=1` became an object under `a`.
 */
function refuseUnclearQuery(req: Request, _res: Response, next: NextFunction): void {
  const query = req.originalUrl.indexOf('?');
  const details = query < 0 ? noFieldErrors() : findQueryProblems(req.originalUrl.slice(query + 1), false);
  for (const name of Object.keys(req.query)) {
    if (name.includes('[') || name.includes(']')) details[name] = `Unknown query parameter '${name}'`;
  }
  if (Object.keys(details).length > 0) throw new ValidationError('Validation failed', details);
  next();
}

/**
 * The same for path parameters, once express-openapi-validator has matched the operation and
 * decoded them (and checked their types: an id with a NUL is already not an integer). And for
 * every number the validator coerced a path or query parameter into: it reads the text with
 * JavaScript's Number and lets what that turns into Infinity (`1e400`, `Infinity`) through its
 * int32 check (it refuses `99999999999`), which used to reach the database as a 500.
 */
function refuseUnusableParameters(req: Request, _res: Response, next: NextFunction): void {
  const openapi = (req as { openapi?: { pathParams?: Record<string, unknown>; rawPathParams?: Record<string, string> } }).openapi;
  const pathParams = openapi?.pathParams ?? {};
  const details = findUnstorableText(pathParams);
  for (const [name, value] of [...Object.entries(pathParams), ...Object.entries(req.query)]) {
    if (typeof value === 'number' && !Number.isFinite(value)) details[name] ??= 'must be a finite number';
  }
  // Number() also reads `0x10`, `1e1`, `+1`, ` 1` and `1\n`, so /users/0x1 was user 1 and
  // ?page=1e1 page 10: every number the validator coerced must have been written in decimal.
  for (const [name, value] of Object.entries(pathParams)) {
    if (typeof value === 'number' && !DECIMAL.test(openapi?.rawPathParams?.[name] ?? '')) details[name] ??= 'must be a decimal integer';
  }
  const query = req.originalUrl.indexOf('?');
  if (query >= 0) {
    const written = new URLSearchParams(req.originalUrl.slice(query + 1));
    for (const [name, value] of Object.entries(req.query)) {
      const coerced = Array.isArray(value) ? value.some((item) => typeof item === 'number') : typeof value === 'number';
      if (coerced && !written.getAll(name).every((text) => DECIMAL.test(text))) details[name] ??= 'must be a decimal integer';
    }
  }
  if (Object.keys(details).length > 0) throw new ValidationError('Validation failed', details);
  next();
}

/** How openapi.yaml's integer parameters are written: decimal digits, perhaps a minus. */
const DECIMAL = /^-?[0-9]+$/;
