// Domain errors. Each carries one of the API's error codes; the edges translate them once:
// the REST error middleware to a status and the envelope, the Connect interceptor to a Code.
import type { components } from '../../gen/openapi/schema.d.ts';

export type ErrorCode = components['schemas']['ErrorCode'];

/** Field path → human-readable problem, as sent in `error.details`. */
export type FieldErrors = Record<string, string>;

/** Problems an answer lists, how long a field path and a problem may be in it. */
const LISTED_PROBLEMS_MAX = 20;
const FIELD_PATH_MAX = 64;
const PROBLEM_TEXT_MAX = 256;

/**
 * `details` as an answer may carry them: at most LISTED_PROBLEMS_MAX, each path and text cut, and
 * the number left out under the key `…`. A client chooses the paths (an unknown JSON key, an
 * undeclared field number): 1 000 unknown fields in a 3 KB request made a gRPC answer whose
 * grpc-status-details-bin header no gRPC client takes (8 KiB in grpc-core), which reset the stream
 * and, in Node's and Python's clients, the connection with every call on it; over Connect a
 * 94 KB request got a 3.9 MB answer (helper 116).
 */
export function boundedFieldErrors(details: FieldErrors): FieldErrors {
  const entries = Object.entries(details);
  const fits = entries.length <= LISTED_PROBLEMS_MAX && entries.every(([path, text]) => path.length <= FIELD_PATH_MAX && text.length <= PROBLEM_TEXT_MAX);
  if (fits) return details;
  const bounded: FieldErrors = {};
  for (const [path, text] of entries.slice(0, LISTED_PROBLEMS_MAX)) bounded[cut(path, FIELD_PATH_MAX)] ??= cut(text, PROBLEM_TEXT_MAX);
  if (entries.length > LISTED_PROBLEMS_MAX) bounded['…'] = `${entries.length - LISTED_PROBLEMS_MAX} more problems not listed`;
  return bounded;
}

const cut = (text: string, max: number): string => (text.length <= max ? text : `${text.slice(0, max - 1)}…`);

/**
 * Makes an error that stands for an answer, not a fault, without a stack trace: a domain error
 * as Connect carries it (see AppError).
 */
export function withoutStack<T>(make: () => T): T {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return make();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/**
 * A domain error: an answer the API gives (a 4xx, or 503 under overload), not a fault. It carries
 * no stack trace: nobody reads one, and under a crowd of refusals capturing it was one of the
 * larger costs of each (a cause, the fault behind a 503, keeps its own).
 */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly details: FieldErrors | undefined;

  constructor(code: ErrorCode, message: string, options?: { details?: FieldErrors; cause?: unknown }) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    Error.stackTraceLimit = limit;
    this.name = 'AppError';
    this.code = code;
    this.details = options?.details === undefined ? undefined : boundedFieldErrors(options.details);
  }
}

export class ValidationError extends AppError {
  constructor(message = 'Validation failed', details?: FieldErrors) {
    super('VALIDATION_ERROR', message, details === undefined ? undefined : { details });
  }
}

export class AuthenticationError extends AppError {
  constructor(message = 'Authentication required') {
    super('AUTHENTICATION_ERROR', message);
  }
}

/**
 * An access token that was presented and refused (unknown, expired, revoked, or its account no
 * longer active): the 401's challenge then says `error="invalid_token"` (RFC 6750 §3.1), which
 * tells a client to drop the token rather than ask the user for a password again.
 */
export class InvalidTokenError extends AuthenticationError {}

export class AuthorizationError extends AppError {
  constructor(message = 'Insufficient permissions') {
    super('AUTHORIZATION_ERROR', message);
  }
}

export class NotFoundError extends AppError {
  constructor(message = 'Resource not found') {
    super('NOT_FOUND', message);
  }
}

export class ConflictError extends AppError {
  constructor(message: string, options?: { details?: FieldErrors; cause?: unknown }) {
    super('CONFLICT', message, options);
  }
}

/** An Idempotency-Key sent again with a different request: refused, nothing done. */
export class IdempotencyKeyReusedError extends AppError {
  constructor() {
    super('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was already used with a different request; use a new key for a new request');
  }
}

export class RateLimitedError extends AppError {
  readonly retryAfterSeconds: number;

  constructor(retryAfterSeconds: number) {
    super('RATE_LIMITED', 'Too many requests, please try again later');
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * What an UnavailableError says when the database could not be reached or did not answer: unlike
 * "busy" (a lock or pool wait that ran out, a conflict), a write may have been carried out.
 */
export const DATABASE_UNAVAILABLE = 'Database unavailable';

/** Whether `error` says the database could not be reached or did not answer: a write may be done. */
export function isDatabaseUnreachable(error: unknown): error is UnavailableError {
  return error instanceof UnavailableError && error.message === DATABASE_UNAVAILABLE;
}

export class UnavailableError extends AppError {
  /** When the client may usefully try again (overload), if known. */
  readonly retryAfterSeconds: number | undefined;

  constructor(message: string, cause?: unknown, retryAfterSeconds?: number) {
    super('SERVICE_UNAVAILABLE', message, { cause });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** When the client may usefully try again, for the errors that say so (Retry-After, RetryInfo). */
export function retryAfterOf(error: AppError): number | undefined {
  if (error instanceof RateLimitedError || error instanceof UnavailableError) return error.retryAfterSeconds;
  return undefined;
}

/**
 * A conditional write found the row at another version than the client read (a stale ETag or
 * expected_version): nothing was written. REST 412, RPC `aborted` (a failed test-and-set that
 * the client retries at a higher level: read again, then write).
 */
export class PreconditionFailedError extends AppError {
  constructor(message = 'The user was changed since the version given; read it again and retry') {
    super('PRECONDITION_FAILED', message);
  }
}

/** The change would leave no active administrator, and so no way to manage the platform. */
export class LastAdminError extends AppError {
  constructor(message = 'Refused: this would leave no active administrator; make another user an active ADMIN first') {
    super('LAST_ADMIN', message);
  }
}
