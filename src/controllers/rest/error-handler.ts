import type { NextFunction, Request, Response } from 'express';
import { ERROR_CODES } from '../../domain/error-codes.ts';
import { AppError, InvalidTokenError, NotFoundError, retryAfterOf } from '../../domain/errors.ts';
import type { Logger } from '../../infrastructure/logger.ts';
import { errorBody } from './envelope.ts';
import { loggedPath } from './request-context.ts';
import { bearerChallenge, NO_STORE_HEADERS } from '../../rpc/client-edge.ts';
import { noFieldErrors } from '../edge-input.ts';

/** body-parser's error type for a JSON body that is not UTF-8 (see rest-app.ts). */
export const INVALID_UTF8 = 'entity.encoding.invalid';

/** The shape of errors from body-parser and express-openapi-validator. */
interface HttpLikeError {
  status?: number;
  statusCode?: number;
  type?: string;
  /** Node's error code: a zlib failure while body-parser inflates a compressed body, say. */
  code?: string;
  errors?: { path?: string; message?: string }[];
}

/** Headers a route may set for its answer that an error answer in its place must not carry. */
const SUCCESS_ONLY_HEADERS = ['content-type', 'etag', 'last-modified', 'content-range', 'accept-ranges', 'content-disposition'] as const;

/** The content codings body-parser inflates (its read.js), for a 415's Accept-Encoding. */
const BODY_CODINGS = 'gzip, deflate, br, zstd';

/** The error codes zlib gives a compressed body it cannot inflate (gzip, deflate, brotli, zstd). */
const DECOMPRESSION_FAILURE = /^(Z_|ERR_BROTLI|ERR_ZSTD|ZSTD_|ERR__ERROR_FORMAT|ERR_PADDING)/;

/** Unknown routes: 404 in the error envelope. */
export function notFoundHandler(_req: Request, _res: Response, next: NextFunction): void {
  next(new NotFoundError('Resource not found'));
}

/**
 * The one place REST errors are translated: domain errors to their status and code, parser and
 * validator errors to clear 4xx answers, anything else to a 500 that reveals nothing outside
 * development.
 */
export function createErrorHandler(options: { logger: Logger; exposeInternals: boolean }) {
  return (error: unknown, req: Request, res: Response, _next: NextFunction): void => {
    const appError = toAppError(error);
    const status = appError === undefined ? 500 : ERROR_CODES[appError.code].http;
    if (status === 503 && clientGone(res)) {
      // The client left before its answer: the calls made for it were cancelled on purpose
      // (see requestContext), which is not a dependency failing. Nobody reads this answer, and
      // requestContext logs the request as abandoned.
    } else if (status === 503) {
      const cause = error instanceof Error && error.cause instanceof Error ? error.cause.message : undefined;
      if (cause === undefined) {
        // This process's own refusal (its bcrypt or list gate is full, or it is shutting down):
        // load shed on purpose, already counted in the request's own log line and metrics.
        options.logger.debug({ requestId: res.locals.requestId, method: req.method, ...loggedPath(req.path), reason: appError?.message }, 'request refused: over capacity');
      } else {
        // A dependency is down (Redis for login, or a layer below): one short line per request,
        // not a stack each, or an outage would bury everything else in the logs.
        options.logger.warn({ requestId: res.locals.requestId, method: req.method, ...loggedPath(req.path), cause }, 'request refused: dependency unavailable');
      }
    } else if (status >= 500) {
      options.logger.error({ err: error, requestId: res.locals.requestId, method: req.method, ...loggedPath(req.path) }, 'request failed');
    }
    if (res.headersSent) {
      res.end();
      return;
    }
    // What the route had set for the answer it meant to give describes that answer, not this
    // one: a docs asset's 412 went out with the asset's `cache-control: public, max-age=3600`, so
    // a shared cache could keep the error as the file for an hour (helper 123). No error answer
    // is to be stored (the API's already were not), and its body is the JSON envelope, whatever
    // type the file would have had.
    for (const name of SUCCESS_ONLY_HEADERS) res.removeHeader(name);
    res.setHeader('cache-control', 'no-store');
    const retryAfter = appError === undefined ? undefined : retryAfterOf(appError);
    if (retryAfter !== undefined) res.setHeader('retry-after', String(retryAfter));
    // A body in a coding the server does not take: the 415 names those it does (RFC 9110
    // §15.5.16), as the RPC refusals do (helper 138).
    if ((error as HttpLikeError | undefined)?.type === 'encoding.unsupported') res.setHeader('accept-encoding', BODY_CODINGS);
    if (status === 401) {
      res.setHeader('www-authenticate', bearerChallenge(appError instanceof InvalidTokenError, appError?.message));
      // A failed login or refresh is a token answer too, and just as uncacheable.
      for (const [name, value] of NO_STORE_HEADERS) res.setHeader(name, value);
    }
    const body =
      appError === undefined
        ? errorBody(res, 'INTERNAL_ERROR', options.exposeInternals && error instanceof Error ? error.message : 'Internal server error')
        : errorBody(res, appError.code, appError.message, appError.details);
    res.status(status).json(body);
  };
}

/**
 * Whether the client closed the connection before the answer could be sent. Not
 * `req.destroyed`: Node sets it once the request's body has been read, client or no client.
 */
function clientGone(res: Response): boolean {
  return res.destroyed || res.writableEnded;
}

function toAppError(error: unknown): AppError | undefined {
  if (error instanceof AppError) return error;
  if (typeof error !== 'object' || error === null) return undefined;
  const http = error as HttpLikeError;
  switch (http.type) {
    case 'entity.parse.failed':
      return new AppError('VALIDATION_ERROR', 'Malformed JSON in request body');
    case INVALID_UTF8:
      return new AppError('VALIDATION_ERROR', 'Request body is not valid UTF-8');
    case 'request.size.invalid':
      return new AppError('VALIDATION_ERROR', 'Request body length does not match its Content-Length');
    case 'entity.too.large':
      return new AppError('PAYLOAD_TOO_LARGE', 'Request body is too large');
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new AppError('UNSUPPORTED_MEDIA_TYPE', 'Unsupported content encoding or charset');
  }
  const status = http.status ?? http.statusCode;
  // body-parser passes zlib's error on as a 400 without a type: a body cut short or garbled.
  if (status === 400 && typeof http.code === 'string' && DECOMPRESSION_FAILURE.test(http.code)) {
    return new AppError('VALIDATION_ERROR', 'Request body could not be decompressed');
  }
  if (Array.isArray(http.errors) && status !== undefined) {
    if (status === 400) return new AppError('VALIDATION_ERROR', 'Validation failed', { details: fieldErrors(http.errors) });
    if (status === 404 || status === 405) return new NotFoundError('Resource not found');
    if (status === 413) return new AppError('PAYLOAD_TOO_LARGE', 'Request body is too large');
    if (status === 415) return new AppError('UNSUPPORTED_MEDIA_TYPE', 'Request body must be application/json');
  }
  // Any other 400 a parser raises is still the request's fault, not the server's.
  if (status === 400) return new AppError('VALIDATION_ERROR', 'Malformed request');
  // A static file's If-Match or If-Unmodified-Since that the file does not meet (`send`'s 412,
  // passed on to next()): it was a 500, logged with a stack, for any anonymous client (helper 123).
  if (status === 412) return new AppError('PRECONDITION_FAILED', 'The file is not at the version the request requires');
  return undefined;
}

/**
 * `/body/username` → `username`; repeated paths keep their first message. An error about the URL
 * itself (a path parameter that is not valid percent-encoding) names `path`.
 */
function fieldErrors(errors: { path?: string; message?: string }[]): Record<string, string> {
  const details = noFieldErrors();
  for (const { path = '', message = 'is invalid' } of errors) {
    const located = /^\/?(body|query|params|path|headers)(?:\/(.*))?$/s.exec(path);
    if (path !== '' && located === null) {
      details['path'] ??= 'is not a valid URL path';
      continue;
    }
    const [, location = 'body', rest = ''] = located ?? [];
    // Body paths nest (`address/lines/0` → `address.lines.0`); a query, path or header
    // parameter's name is given as sent, slashes included.
    const field = location === 'body' ? rest.replaceAll('/', '.') : rest;
    // A query pair with no name (`?=`) is about the query, not a body the request may not have.
    details[field || location] ??= message;
  }
  return details;
}
