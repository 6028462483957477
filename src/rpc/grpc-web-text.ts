// gRPC-Web's text mode: the binary gRPC-Web protocol with each body in base64
// (`application/grpc-web-text`, PROTOCOL-WEB.md), the default mode of Google's grpc-web client and
// what its XHR transport sends. connect-es speaks only gRPC-Web's binary and JSON forms and
// answered it a bare 415, which that client reads as `unknown`. A text call is served as the binary
// call it encodes: its body is decoded as it arrives, and the answer is encoded chunk by chunk, each
// chunk padded on its own, as the protocol allows ("the implementation may send base64-encoded
// chunks with potential padding whenever the runtime needs to flush").
import { Code, ConnectError } from '@connectrpc/connect';
import type { UniversalServerRequest, UniversalServerResponse } from '@connectrpc/connect/protocol';

/** What a text call's answer is sent as. */
export const GRPC_WEB_TEXT_CONTENT_TYPE = 'application/grpc-web-text+proto';

/** The binary form a text call is served as. */
const GRPC_WEB_BINARY_CONTENT_TYPE = 'application/grpc-web+proto';

const TEXT_CONTENT_TYPE = /^application\/grpc-web-text(?:\+proto)?$/i;

/** Whether a request's Content-Type names gRPC-Web's text mode (protobuf: the only one it has). */
export function isGrpcWebText(contentType: string | null | undefined): boolean {
  return contentType != null && TEXT_CONTENT_TYPE.test(contentType.trim());
}

/** The base64 length of `bytes` bytes: what a text body of a message that size takes on the wire. */
export function base64Length(bytes: number): number {
  return Math.ceil(bytes / 3) * 4;
}

const NOT_BASE64 = /[^A-Za-z0-9+/=]/;

function notBase64(): ConnectError {
  return new ConnectError('the gRPC-Web text body is not base64', Code.InvalidArgument);
}

/**
 * Decodes base64 whose length is a multiple of four, strictly: only the standard alphabet, and
 * padding only at the end of a group of four, where each padded group ends a chunk and more may
 * follow. Node's own decoder skips what it does not know and stops at the first `=`.
 */
export function decodeBase64Groups(text: string): Buffer {
  if (text.length % 4 !== 0 || NOT_BASE64.test(text)) throw notBase64();
  const parts: Buffer[] = [];
  let start = 0;
  while (start < text.length) {
    const pad = text.indexOf('=', start);
    if (pad < 0) {
      parts.push(Buffer.from(text.slice(start), 'base64'));
      break;
    }
    let end = pad;
    while (text.charCodeAt(end) === 0x3d) end += 1;
    // `xx==` or `xxx=`: one or two `=`, closing a group of four.
    if (end - pad > 2 || (end - start) % 4 !== 0) throw notBase64();
    parts.push(Buffer.from(text.slice(start, end), 'base64'));
    start = end;
  }
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
}

/** A text body's bytes as they arrive, decoded by whole groups of four; a body that ends mid-group is refused. */
async function* decodeBody(source: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  let pending = '';
  for await (const chunk of source) {
    pending += Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('latin1');
    const whole = pending.length - (pending.length % 4);
    if (whole === 0) continue;
    const decoded = decodeBase64Groups(pending.slice(0, whole));
    pending = pending.slice(whole);
    if (decoded.byteLength > 0) yield decoded;
  }
  if (pending.length > 0) throw notBase64();
}

async function* encodeBody(source: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    if (chunk.byteLength > 0) yield Buffer.from(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('base64'), 'latin1');
  }
}

/** A text call as the binary gRPC-Web call it encodes. */
export function binaryRequestOf(request: UniversalServerRequest): UniversalServerRequest {
  const header = new Headers(request.header);
  header.set('content-type', GRPC_WEB_BINARY_CONTENT_TYPE);
  // The length on the wire is the text's, not the message's.
  header.delete('content-length');
  return { ...request, header, body: decodeBody(request.body as AsyncIterable<Uint8Array>) };
}

/** The binary call's answer, as text. */
export function textResponseOf(response: UniversalServerResponse): UniversalServerResponse {
  const header = new Headers(response.header);
  if (header.get('content-type')?.toLowerCase().startsWith('application/grpc-web') === true) header.set('content-type', GRPC_WEB_TEXT_CONTENT_TYPE);
  header.delete('content-length');
  return { ...response, header, body: response.body === undefined ? undefined : encodeBody(response.body) };
}
