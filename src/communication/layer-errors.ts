// Errors across layer boundaries. A domain error raised in a lower layer must reach the public
// client with the same code and message as in a monolith, so the internal servers send it as a
// Connect error with a google.rpc.ErrorInfo naming its API code, and the internal clients turn
// that back into the same AppError. Transport failures become UnavailableError (REST 503,
// RPC `unavailable`), keeping the original as the cause. createLayerTransport does the client
// side itself, around its retries; withLayerErrors does it for any other transport.
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type Interceptor, type Transport } from '@connectrpc/connect';
import { ErrorInfoSchema } from '../../gen/proto/google/rpc/error_details_pb.js';
import { AppError, InvalidTokenError, RateLimitedError, retryAfterOf, UnavailableError, withoutStack, type ErrorCode, type FieldErrors } from '../domain/errors.ts';
import type { Logger } from '../infrastructure/logger.ts';
import { CONNECT_CODE, isErrorCode } from '../domain/error-codes.ts';
import { currentCallContext } from '../infrastructure/call-context.ts';

/** ErrorInfo.domain of errors that are Arcana Cloud's own domain errors. */
export const ERROR_DOMAIN = 'arcana-cloud';
const RETRY_AFTER = 'retryAfterSeconds';
/** ErrorInfo metadata marking an AUTHENTICATION_ERROR as a refused access token (InvalidTokenError). */
const INVALID_TOKEN = 'invalidToken';

/** The message public clients see when a layer below cannot be reached. */
export const UNAVAILABLE_MESSAGE = 'The service is temporarily unavailable, please try again shortly';

/**
 * Server side of an internal API: domain errors become Connect errors carrying their API code;
 * anything unexpected is logged here and sent as a bare `internal`, revealing nothing.
 */
export function layerServerErrorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (error) {
      if (error instanceof AppError) throw toLayerConnectError(error);
      if (error instanceof ConnectError && error.code !== Code.Internal && error.code !== Code.Unknown) throw error;
      logger.error({ err: error, requestId: currentCallContext()?.requestId, procedure: `${req.service.typeName}/${req.method.name}` }, 'internal call failed');
      throw new ConnectError('Internal server error', Code.Internal);
    }
  };
}

export function toLayerConnectError(error: AppError): ConnectError {
  const metadata: Record<string, string> = { ...error.details };
  const retryAfter = retryAfterOf(error);
  if (retryAfter !== undefined) metadata[RETRY_AFTER] = String(retryAfter);
  if (error instanceof InvalidTokenError) metadata[INVALID_TOKEN] = 'true';
  const info = create(ErrorInfoSchema, { reason: error.code, domain: ERROR_DOMAIN, metadata });
  return withoutStack(() => new ConnectError(error.message, CONNECT_CODE[error.code], undefined, [{ desc: ErrorInfoSchema, value: info }], error));
}

/**
 * Client side of an internal API: `inner` with every failure turned back into the error the
 * service or facade above expects. It wraps the transport rather than being a client
 * interceptor because connect-es re-wraps whatever an interceptor throws as a ConnectError.
 */
export function withLayerErrors(inner: Transport): Transport {
  return {
    unary: (...args) => inner.unary(...args).catch((error: unknown) => Promise.reject(fromLayerError(error))),
    stream: (...args) => inner.stream(...args).catch((error: unknown) => Promise.reject(fromLayerError(error))),
  };
}

export function fromLayerError(error: unknown): Error {
  if (error instanceof AppError) return error;
  const connectError = ConnectError.from(error);
  const info = connectError.findDetails(ErrorInfoSchema).find((detail) => detail.domain === ERROR_DOMAIN);
  if (info !== undefined && isErrorCode(info.reason)) {
    return appErrorFrom(info.reason, connectError.rawMessage, info.metadata, connectError);
  }
  // A layer that cannot be reached now (restarting, shutting down, overloaded) may be again in a
  // moment, or another replica may answer: clients are told to come back shortly.
  if (isTransportFailure(connectError)) return new UnavailableError(UNAVAILABLE_MESSAGE, connectError, 1);
  // A bare `internal` (already logged where it happened) or a code no domain error maps to,
  // such as `unimplemented` from a layer of another version: a fault, not the caller's.
  return new Error(`internal call ${connectError.code === Code.Internal ? 'failed' : `answered ${Code[connectError.code]}`}: ${connectError.rawMessage}`, {
    cause: connectError,
  });
}

function appErrorFrom(code: ErrorCode, message: string, metadata: Record<string, string>, cause: ConnectError): AppError {
  if (code === 'RATE_LIMITED') return new RateLimitedError(Number(metadata[RETRY_AFTER] ?? 1));
  if (code === 'SERVICE_UNAVAILABLE') {
    const retryAfter = metadata[RETRY_AFTER];
    return new UnavailableError(message, cause, retryAfter === undefined ? undefined : Number(retryAfter));
  }
  if (code === 'AUTHENTICATION_ERROR' && metadata[INVALID_TOKEN] === 'true') return new InvalidTokenError(message);
  const details: FieldErrors = Object.fromEntries(Object.entries(metadata).filter(([key]) => key !== RETRY_AFTER));
  return new AppError(code, message, { ...(Object.keys(details).length === 0 ? {} : { details }), cause });
}

/** Socket error codes that mean the request never reached a server, or the connection broke. */
/** The code of a call's failure on a connection that was never made: nothing was sent. */
export const NOT_CONNECTED = 'ERR_LAYER_NOT_CONNECTED';

const CONNECTION_FAILURES = new Set([NOT_CONNECTED, 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

/**
 * Whether the failure lies in reaching the layer below rather than in what it answered: no
 * connection, a connection lost mid-call (a process that dies resets its streams, which HTTP/2
 * reports as CANCEL and connect-node as `canceled` or `aborted`), or no answer in time.
 */
export function isTransportFailure(error: ConnectError): boolean {
  if (error.findDetails(ErrorInfoSchema).length > 0) return false;
  const lost = error.code === Code.Unavailable || error.code === Code.Canceled || error.code === Code.Aborted;
  return lost || error.code === Code.DeadlineExceeded || socketErrorCode(error) !== undefined;
}

/** The socket error code somewhere in the error's cause chain, if it is a connection failure. */
export function socketErrorCode(error: unknown): string | undefined {
  const seen = new Set<unknown>();
  let current: unknown = error;
  while (typeof current === 'object' && current !== null && !seen.has(current)) {
    seen.add(current);
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && CONNECTION_FAILURES.has(code)) return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}
