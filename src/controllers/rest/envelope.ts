// The REST response envelopes of spec §11, typed by openapi.yaml.
import type { Response } from 'express';
import type { components } from '../../../gen/openapi/schema.d.ts';
import type { User } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import { boundedFieldErrors } from '../../domain/errors.ts';
import { isoTime } from '../../domain/iso-time.ts';
import { toRestUser } from './rest-mapping.ts';

type Schemas = components['schemas'];
export type ErrorBody = Schemas['ErrorResponse'];
export type PaginationBody = Schemas['Pagination'];

/** The request id set by the request-context middleware. */
export function requestIdOf(res: Response): string {
  return res.locals.requestId ?? '';
}

/** `{ success, data, message, timestamp, requestId }` with `status` (200 unless given). */
export function sendSuccess(res: Response, data: unknown, message: string, status = 200): void {
  res.status(status).json({
    success: true as const,
    data,
    message,
    timestamp: isoTime(Date.now()),
    requestId: requestIdOf(res),
  });
}

/** `{ success, items, pagination, timestamp, requestId }`. */
export function sendPage(res: Response, items: readonly unknown[], pagination: PaginationBody): void {
  res.status(200).json({
    success: true as const,
    items,
    pagination,
    timestamp: isoTime(Date.now()),
    requestId: requestIdOf(res),
  });
}

export function errorBody(res: Response, code: ErrorBody['error']['code'], message: string, details?: Record<string, string>): ErrorBody {
  return errorEnvelope(requestIdOf(res), code, message, details);
}

/** `{ success: false, error, timestamp, requestId }`, for answers written without Express too (src/server.ts). */
export function errorEnvelope(requestId: string, code: ErrorBody['error']['code'], message: string, details?: Record<string, string>): ErrorBody {
  return {
    success: false,
    error: { code, message, ...(details === undefined ? {} : { details: boundedFieldErrors(details) }) },
    timestamp: isoTime(Date.now()),
    requestId,
  };
}

/** A user's strong entity tag: its version, which every write to the user increments. */
export const etagOf = (user: User): string => `"${user.version}"`;

/**
 * Sends one user with its ETag, the tag a client sends back in If-Match or If-None-Match. Never
 * content-coded (`no-transform`, which the compression middleware and proxies heed): the tag is
 * strong, for If-Match, and a gzipped answer is another representation that cannot share it
 * (RFC 9110 8.8.1); a user with a long name and avatar URL went out gzipped under `"2"` (helper 171).
 */
export function sendUser(res: Response, user: User, message: string): void {
  res.setHeader('etag', etagOf(user));
  res.setHeader('cache-control', 'no-store, no-transform');
  sendSuccess(res, toRestUser(user), message);
}
