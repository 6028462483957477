// An RPC refused before any handler runs, answered in the caller's own protocol: gRPC and gRPC-Web
// read a status from a trailers-only answer, a Connect stream from its end-of-stream message, a
// unary Connect call from a JSON error with its code's HTTP status. A bare HTTP status (or REST's
// envelope) reads as `internal` or `unknown` to those clients: a server fault where the client
// asked for something this server does not do.
import type { ConnectError } from '@connectrpc/connect';
import { encodeEnvelope } from '@connectrpc/connect/protocol';
import { codeToHttpStatus, endStreamFlag, errorToJson, errorToJsonBytes } from '@connectrpc/connect/protocol-connect';
import { setTrailerStatus } from '@connectrpc/connect/protocol-grpc';
import { GRPC_WEB_TEXT_CONTENT_TYPE } from './grpc-web-text.ts';

/** An answer written before any handler runs. */
export interface Refusal {
  status: number;
  headers: Record<string, string>;
  body: Uint8Array;
}

/** `error` as the answer to a call sent with `contentType` (lower-cased or not). */
export function rpcRefusal(contentType: string, error: ConnectError): Refusal {
  const type = contentType.toLowerCase();
  if (type.startsWith('application/grpc')) {
    // gRPC and gRPC-Web: a trailers-only answer, the status in the headers and no message.
    const status = new Headers();
    setTrailerStatus(status, error);
    return {
      status: 200,
      headers: { 'content-type': grpcContentType(type), ...Object.fromEntries(status) },
      body: new Uint8Array(0),
    };
  }
  if (type.startsWith('application/connect+')) {
    // A Connect stream ends with its error in the end-of-stream message.
    const endStream = new TextEncoder().encode(JSON.stringify({ error: errorToJson(error, undefined) }));
    return { status: 200, headers: { 'content-type': 'application/connect+json' }, body: encodeEnvelope(endStreamFlag, endStream) };
  }
  // A Connect unary call (POST with a JSON or binary body, or GET): the error as JSON.
  return { status: codeToHttpStatus(error.code), headers: { 'content-type': 'application/json' }, body: errorToJsonBytes(error, undefined) };
}

/** The Content-Type of a gRPC or gRPC-Web answer to a call sent as `type` (lower-cased). */
function grpcContentType(type: string): string {
  if (type.startsWith('application/grpc-web-text')) return GRPC_WEB_TEXT_CONTENT_TYPE;
  return type.startsWith('application/grpc-web') ? 'application/grpc-web+proto' : 'application/grpc';
}
