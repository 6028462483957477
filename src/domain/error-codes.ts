// What each API error code is on each protocol: the one table that the REST error handler, the
// Connect error translator and the internal layer boundary all read, so that adding a code is one
// line here (the compiler refuses a code without its row) and the protocols cannot disagree.
import { Code } from '@connectrpc/connect';
import type { ErrorCode } from './errors.ts';

interface ErrorCodeMeaning {
  /** The REST status. */
  http: number;
  /** The Connect (and gRPC) code. */
  connect: Code;
}

export const ERROR_CODES: Readonly<Record<ErrorCode, ErrorCodeMeaning>> = {
  VALIDATION_ERROR: { http: 400, connect: Code.InvalidArgument },
  AUTHENTICATION_ERROR: { http: 401, connect: Code.Unauthenticated },
  AUTHORIZATION_ERROR: { http: 403, connect: Code.PermissionDenied },
  NOT_FOUND: { http: 404, connect: Code.NotFound },
  CONFLICT: { http: 409, connect: Code.AlreadyExists },
  // The system is not in a state the change requires (another active admin), which retrying
  // alone cannot fix.
  LAST_ADMIN: { http: 409, connect: Code.FailedPrecondition },
  // gRPC's documented code for a failed test-and-set the client should retry at a higher level.
  PRECONDITION_FAILED: { http: 412, connect: Code.Aborted },
  PAYLOAD_TOO_LARGE: { http: 413, connect: Code.ResourceExhausted },
  UNSUPPORTED_MEDIA_TYPE: { http: 415, connect: Code.InvalidArgument },
  // The request is well formed; what stands in its way is state: the key's earlier request.
  IDEMPOTENCY_KEY_REUSED: { http: 422, connect: Code.FailedPrecondition },
  RATE_LIMITED: { http: 429, connect: Code.ResourceExhausted },
  INTERNAL_ERROR: { http: 500, connect: Code.Internal },
  SERVICE_UNAVAILABLE: { http: 503, connect: Code.Unavailable },
};

/** Each code's Connect code, for the translators and the tests. */
export const CONNECT_CODE = Object.fromEntries(Object.entries(ERROR_CODES).map(([code, meaning]) => [code, meaning.connect])) as Readonly<Record<ErrorCode, Code>>;

/** Whether a string (an ErrorInfo reason from another layer, say) is one of the API's codes. */
export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ERROR_CODES, value);
}
