// Decodes an RPC's request body exactly as @connectrpc/connect is about to, but first, so that what
// connect-es cannot decode is answered as the client's mistake. connect-es reads, decompresses and
// parses a request before any interceptor runs, and labels several of those failures `internal`:
// a binary message that does not parse ("parse binary: …"), a gzip or brotli body cut short, a
// compressed gRPC message without an encoding, a Connect GET message that is not base64. Those
// calls were then neither logged nor rate limited, and looked like server faults.
//
// The pieces are connect-es's own (content-type parsing, compression negotiation, envelope
// splitting, the method's serializers built from the same options), so a body this decoder
// accepts is one connect-es accepts; its verdicts differ only in the code and message.
// Only calls with a single request message (unary and server-streaming) are decoded here; the
// bytes read are handed on to connect-es unchanged.
import { ScalarType, type BinaryReadOptions, type DescEnum, type DescField, type DescMessage, type DescMethod, type JsonReadOptions, type Message } from '@bufbuild/protobuf';
import { isFieldError } from '@bufbuild/protobuf/reflect';
import { base64Decode, BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import {
  compressedFlag,
  compressionNegotiate,
  createMethodSerializationLookup,
  type Compression,
  type MethodSerializationLookup as GenericSerializationLookup,
} from '@connectrpc/connect/protocol';
import {
  endStreamFlag,
  headerStreamAcceptEncoding,
  headerStreamEncoding,
  headerUnaryAcceptEncoding,
  headerUnaryContentLength,
  headerUnaryEncoding,
  parseContentType as parseConnectContentType,
} from '@connectrpc/connect/protocol-connect';
import {
  headerAcceptEncoding as headerGrpcAcceptEncoding,
  headerEncoding as headerGrpcEncoding,
  parseContentType as parseGrpcContentType,
} from '@connectrpc/connect/protocol-grpc';
import { parseContentType as parseGrpcWebContentType } from '@connectrpc/connect/protocol-grpc-web';
import { isUtf8 } from 'node:buffer';
import { ValidationError, type FieldErrors } from '../../domain/errors.ts';
import { noFieldErrors, notAFieldOf } from '../edge-input.ts';
import { callEncodingsKey, callReadLimitKey } from '../../rpc/call-limits.ts';
import { connectTimeoutMs, grpcTimeoutMs } from '../../infrastructure/call-context.ts';

type MethodSerializationLookup = GenericSerializationLookup<DescMessage, DescMessage>;

export interface RequestDecoderOptions {
  readMaxBytes: number;
  acceptCompression: Compression[];
  /**
   * Refuse a binary message with a field its type does not declare as it is read, before it is
   * parsed (the public API refuses such fields anyway; between the deployment's own layers, which
   * may be upgraded one at a time, they are kept).
   */
  refuseUnknownFields?: boolean | undefined;
  jsonOptions?: Partial<JsonReadOptions> | undefined;
  binaryOptions?: Partial<BinaryReadOptions> | undefined;
}

/** The raw request body, read at most once. */
export type ReadBody = (maxBytes: number, lengthHint: string | null) => Promise<Uint8Array>;

/** Errors connect-es raises with a code that already says what happened; they pass unchanged. */
const PASS_THROUGH = new Set([Code.InvalidArgument, Code.ResourceExhausted, Code.Unimplemented, Code.Canceled, Code.Aborted, Code.DeadlineExceeded]);

const ENVELOPE_HEADER_BYTES = 5;

/**
 * An encoding this server does not speak: `unimplemented` naming those it does, as the protocols
 * require, in a fixed text. connect-es's own message quotes the client's header, which put any
 * client's bytes (C1 controls, 60 KB of them over HTTP/2) into the request log and the answer
 * (helper 154). The metadata (the accepted encodings' header) is kept.
 */
function unsupportedCompression(error: ConnectError): ConnectError {
  const accepted = [...error.metadata.values()][0] ?? 'identity';
  return new ConnectError(`unsupported compression: supported encodings are ${accepted}`, Code.Unimplemented, error.metadata);
}

/**
 * What is wrong with a call's protocol headers before anything is read, in a fixed text: a deadline
 * that does not parse, or an encoding this server does not speak. connect-es raises both only
 * after the request gate has let the call in and before any interceptor runs, so such calls left
 * neither a log line nor a metric (helper 154), and its messages quote the client's value.
 */
export function protocolHeaderProblem(context: HandlerContext, acceptCompression: Compression[]): ConnectError | undefined {
  const header = context.requestHeader;
  const grpc = context.protocolName !== 'connect';
  const deadline = header.get(grpc ? 'grpc-timeout' : 'connect-timeout-ms');
  if (deadline !== null && (grpc ? grpcTimeoutMs(deadline) : connectTimeoutMs(deadline)) === undefined) {
    return new ConnectError(`protocol error: invalid ${grpc ? 'grpc-timeout' : 'connect-timeout-ms'} value`, Code.InvalidArgument);
  }
  let requested: string | null;
  let acceptHeader: string;
  if (grpc) {
    requested = header.get(headerGrpcEncoding);
    acceptHeader = headerGrpcAcceptEncoding;
  } else if (context.method.methodKind === 'unary') {
    requested = context.requestMethod === 'GET' ? new URL(context.url).searchParams.get('compression') : header.get(headerUnaryEncoding);
    acceptHeader = headerUnaryAcceptEncoding;
  } else {
    requested = header.get(headerStreamEncoding);
    acceptHeader = headerStreamAcceptEncoding;
  }
  const { error } = compressionNegotiate(acceptCompression, requested, null, acceptHeader);
  return error === undefined ? undefined : unsupportedCompression(error);
}

/**
 * Throws what the client should be told when connect-es would fail to decode this call's request;
 * otherwise resolves to the request message (undefined for the calls it does not decode).
 */
export type RequestDecoder = (context: HandlerContext, readBody: ReadBody) => Promise<Message | undefined>;

export function createRequestDecoder(options: RequestDecoderOptions): RequestDecoder {
  const serializations = new WeakMap<DescMethod, MethodSerializationLookup>();
  const serializationOf = (method: DescMethod) => {
    let lookup = serializations.get(method);
    if (lookup === undefined) {
      lookup = createMethodSerializationLookup(method, options.binaryOptions, options.jsonOptions, {
        readMaxBytes: options.readMaxBytes,
        writeMaxBytes: options.readMaxBytes,
      });
      serializations.set(method, lookup);
    }
    return lookup;
  };

  const parse = (method: DescMethod, binary: boolean, bytes: Uint8Array): Message =>
    binary ? parseBinary(method.input, serializationOf(method), bytes, options.refuseUnknownFields === true) : parseJson(method.input, serializationOf(method), bytes);

  const decompress = async (compression: Compression | null, bytes: Uint8Array, maxBytes: number): Promise<Uint8Array> => {
    if (compression === null) return bytes;
    try {
      return await compression.decompress(bytes, maxBytes);
    } catch (error) {
      if (error instanceof ConnectError && error.code === Code.ResourceExhausted) throw error;
      throw new ValidationError(`Request body could not be decompressed (${compression.name})`);
    }
  };

  const negotiate = (context: HandlerContext, requested: string | null, acceptHeader: string) => {
    const encodings = context.values.get(callEncodingsKey);
    const accepted = encodings === undefined ? options.acceptCompression : options.acceptCompression.filter((compression) => encodings.includes(compression.name));
    const negotiated = compressionNegotiate(accepted, requested, null, acceptHeader);
    if (negotiated.error !== undefined) throw unsupportedCompression(negotiated.error);
    return negotiated.request;
  };

  return async (context, readBody) => {
    const { method } = context;
    if (method.methodKind !== 'unary' && method.methodKind !== 'server_streaming') return undefined;
    const readMaxBytes = Math.min(options.readMaxBytes, context.values.get(callReadLimitKey) ?? options.readMaxBytes);
    const read = async (maxBytes: number, lengthHint: string | null) => {
      try {
        return await readBody(maxBytes, lengthHint);
      } catch (error) {
        if (error instanceof ConnectError && PASS_THROUGH.has(error.code)) throw error;
        // The connection failed (the client went away): nothing the server did wrong.
        throw new ConnectError('request body could not be read', Code.Aborted, undefined, undefined, error);
      }
    };
    if (context.protocolName === 'connect' && method.methodKind === 'unary') {
      if (context.requestMethod === 'GET') {
        const query = new URL(context.url).searchParams;
        const message = query.get('message') ?? '';
        const compression = negotiate(context, query.get('compression'), headerUnaryAcceptEncoding);
        let bytes: Uint8Array;
        if (query.get('base64') === '1') {
          try {
            bytes = base64Decode(message);
          } catch {
            throw new ValidationError('The message query parameter is not valid base64');
          }
        } else {
          bytes = new TextEncoder().encode(message);
        }
        return parse(method, query.get('encoding') === 'proto', await decompress(compression, bytes, readMaxBytes));
      }
      const type = parseConnectContentType(context.requestHeader.get('content-type'));
      if (type === undefined) return undefined;
      const compression = negotiate(context, context.requestHeader.get(headerUnaryEncoding), headerUnaryAcceptEncoding);
      const bytes = await read(readMaxBytes, context.requestHeader.get(headerUnaryContentLength));
      return parse(method, type.binary, await decompress(compression, bytes, readMaxBytes));
    }
    // Every other protocol frames messages in envelopes.
    let binary: boolean;
    let requested: string | null;
    let acceptHeader: string;
    if (context.protocolName === 'connect') {
      const type = parseConnectContentType(context.requestHeader.get('content-type'));
      if (type === undefined) return undefined;
      binary = type.binary;
      requested = context.requestHeader.get(headerStreamEncoding);
      acceptHeader = headerStreamAcceptEncoding;
    } else {
      const type =
        context.protocolName === 'grpc' ? parseGrpcContentType(context.requestHeader.get('content-type')) : parseGrpcWebContentType(context.requestHeader.get('content-type'));
      if (type === undefined) return undefined;
      binary = type.binary;
      requested = context.requestHeader.get(headerGrpcEncoding);
      acceptHeader = headerGrpcAcceptEncoding;
    }
    const compression = negotiate(context, requested, acceptHeader);
    let bytes: Uint8Array;
    try {
      // One message and its envelope header; connect-es would limit the message alone.
      bytes = await read(readMaxBytes + ENVELOPE_HEADER_BYTES, null);
    } catch (error) {
      if (!(error instanceof ConnectError && error.code === Code.ResourceExhausted)) throw error;
      throw new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
    }
    // A Connect stream's end-of-stream envelope carries no message; connect-es skips it.
    const envelopes = splitEnvelopes(bytes, readMaxBytes).filter((envelope) => !(context.protocolName === 'connect' && (envelope.flags & endStreamFlag) === endStreamFlag));
    const kind = method.methodKind === 'unary' ? 'unary' : 'server-streaming';
    // The same answers connect-es gives when it finds these, and before anything is inflated:
    // thousands of tiny compressed messages fit the body limit, each inflating to it.
    if (envelopes.length === 0) throw new ConnectError(`protocol error: missing input message for ${kind} method`, Code.Unimplemented);
    if (envelopes.length > 1) throw new ConnectError(`protocol error: received extra input message for ${kind} method`, Code.Unimplemented);
    const [envelope] = envelopes as [{ flags: number; data: Uint8Array }];
    // A client's message is plain or compressed; the other bits are the server's (trailers, end of
    // stream) or reserved, and one set here is not a message anyone meant (helper 86: gRPC-Web's
    // 0x02 was read as a plain message).
    if ((envelope.flags & ~compressedFlag) !== 0) throw new ConnectError(`protocol error: invalid envelope flags ${envelope.flags}`, Code.InvalidArgument);
    if ((envelope.flags & compressedFlag) !== compressedFlag) return parse(method, binary, envelope.data);
    if (compression === null) throw new ValidationError('Request message is compressed, but the request names no encoding');
    return parse(method, binary, await decompress(compression, envelope.data, readMaxBytes));
  };
}

/**
 * The enveloped messages of a body read in full, with connect-es's errors for a message over the
 * limit and for bytes left over; connect-es splits them with a chain of async generators, which
 * a body already in memory does not need.
 */
function splitEnvelopes(bytes: Uint8Array, readMaxBytes: number): { flags: number; data: Uint8Array }[] {
  const envelopes: { flags: number; data: Uint8Array }[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 0;
  while (bytes.byteLength - offset >= ENVELOPE_HEADER_BYTES) {
    const length = view.getUint32(offset + 1);
    if (length > readMaxBytes) throw new ConnectError(`message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
    const start = offset + ENVELOPE_HEADER_BYTES;
    if (bytes.byteLength - start < length) break;
    envelopes.push({ flags: view.getUint8(offset), data: bytes.subarray(start, start + length) });
    offset = start + length;
  }
  if (offset < bytes.byteLength) throw new ConnectError('protocol error: incomplete envelope', Code.InvalidArgument);
  return envelopes;
}

function parseBinary(desc: DescMessage, serialization: MethodSerializationLookup, bytes: Uint8Array, refuseUnknown: boolean): Message {
  const problem = wireProblem(desc, bytes, refuseUnknown);
  if (problem?.kind === 'wire type') throw new ValidationError(`Malformed protobuf in request body: field ${problem.path} is not sent with its wire type`);
  // As the validator names such a field once parsed (findMessageProblems), but before: protobuf-es
  // keeps every unknown field as an object, and 20 bytes of Brotli inflating to 49,500 empty
  // unknown fields cost ~100 ms of CPU and ~20 MB of heap per call to parse (helper 202: Health
  // checks, which no rate limit covers, took the monolith to 2.5 GB and admin logins to 10 s).
  if (problem?.kind === 'unknown') throw new ValidationError('Validation failed', { [problem.path]: notAFieldOf(problem.typeName) });
  try {
    return serialization.getI(true).parse(bytes);
  } catch (error) {
    if (error instanceof ConnectError && error.code === Code.ResourceExhausted) throw error;
    // The decoder's reasons ("premature EOF", "invalid wire type 7") name no content.
    const reason = error instanceof ConnectError ? error.rawMessage.replace(/^parse binary: /, '') : 'undecodable';
    throw new ValidationError(`Malformed protobuf in request body: ${reason}`);
  }
}

/** How many messages deep the wire check follows nested messages (the parser's own limit is deeper). */
const WIRE_CHECK_DEPTH = 32;

type WireProblem = { kind: 'wire type'; path: string } | { kind: 'unknown'; path: string; typeName: string };

/**
 * The first problem of a binary message (nested ones too) that the parser would not report, by
 * its path (`user.first_name`, `user.99`):
 * - a declared field that arrives with a wire type other than its declaration's. protobuf-es
 *   reads a declared field as its declared type whatever wire type it came with (a VARINT as a
 *   string, a group's start as a number), where other parsers skip or refuse it: a proxy or an
 *   inspector in front of the server and the server itself would read two different messages
 *   (helper 86);
 * - with `refuseUnknown`, a field the message does not declare (else it is skipped).
 * Bytes that do not parse are left to the parser, whose error names the problem.
 */
function wireProblem(desc: DescMessage, bytes: Uint8Array, refuseUnknown: boolean, depth = 0): WireProblem | undefined {
  const reader = new BinaryReader(bytes);
  try {
    while (reader.pos < reader.len) {
      const [number, wireType] = reader.tag();
      const field = desc.fields.find((candidate) => candidate.number === number);
      if (field === undefined) {
        if (refuseUnknown) return { kind: 'unknown', path: String(number), typeName: desc.typeName };
        reader.skip(wireType, number);
        continue;
      }
      if (!wireTypesOf(field).includes(wireType)) return { kind: 'wire type', path: field.name };
      const nested = field.fieldKind === 'message' || (field.fieldKind === 'list' && field.listKind === 'message') ? field.message : undefined;
      if (nested !== undefined && wireType === WireType.LengthDelimited && depth < WIRE_CHECK_DEPTH) {
        const inner = wireProblem(nested, reader.bytes(), refuseUnknown, depth + 1);
        if (inner !== undefined) return { ...inner, path: `${field.name}.${inner.path}` };
      } else {
        reader.skip(wireType, number);
      }
    }
  } catch {
    return undefined;
  }
  return undefined;
}

/** The wire types a field may arrive with (a repeated number also packed, as length-delimited). */
function wireTypesOf(field: DescField): WireType[] {
  switch (field.fieldKind) {
    case 'scalar':
      return [wireTypeOfScalar(field.scalar)];
    case 'enum':
      return [WireType.Varint];
    case 'message':
      return [field.delimitedEncoding ? WireType.StartGroup : WireType.LengthDelimited];
    case 'map':
      return [WireType.LengthDelimited];
    case 'list':
      if (field.listKind === 'message') return [field.delimitedEncoding ? WireType.StartGroup : WireType.LengthDelimited];
      return [field.listKind === 'enum' ? WireType.Varint : wireTypeOfScalar(field.scalar), WireType.LengthDelimited];
  }
}

function wireTypeOfScalar(scalar: ScalarType): WireType {
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WireType.LengthDelimited;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WireType.Bit64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WireType.Bit32;
    default:
      return WireType.Varint;
  }
}

/**
 * JSON requests are decoded strictly: a key or an enum name the message does not declare is an
 * error naming it, not silently dropped (ListUsers `{"role":"GUEST"}` must not list everyone).
 * Messages here are fixed or name fields; the decoder's own words, which may quote the values
 * sent, only reach the client, in the field violation.
 */
function parseJson(desc: DescMessage, serialization: MethodSerializationLookup, bytes: Uint8Array): Message {
  // connect-es would decode invalid UTF-8 as U+FFFD: text other than what was sent.
  if (!isUtf8(bytes)) throw new ValidationError('Request body is not valid UTF-8');
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new ValidationError('Malformed JSON in request body');
  }
  const problems = findJsonProblems(desc, json);
  if (Object.keys(problems).length > 0) throw new ValidationError('Validation failed', problems);
  try {
    return serialization.getI(false).parse(bytes);
  } catch (error) {
    if (error instanceof ConnectError && error.code === Code.ResourceExhausted) throw error;
    const cause = error instanceof ConnectError ? error.cause : error;
    const fieldError = cause instanceof Error ? cause.cause : undefined;
    if (isFieldError(fieldError)) {
      const field = fieldError.field();
      throw new ValidationError('Validation failed', Object.assign(noFieldErrors(), { [field.name]: fieldError.message }));
    }
    throw new ValidationError('Validation failed', { request: cause instanceof Error ? cause.message : 'cannot be decoded' });
  }
}

/**
 * Keys and enum names a JSON request uses that its message does not declare, by proto field path.
 * Shapes and types are left to the decoder, which names the field itself.
 */
function findJsonProblems(desc: DescMessage, json: unknown): FieldErrors {
  const problems = noFieldErrors();
  const pending: [DescMessage, unknown, string, number][] = [[desc, json, '', 0]];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [message, value, prefix, depth] = next;
    // Well-known types have JSON forms of their own; the decoder bounds recursion itself.
    if (depth > 100 || message.typeName.startsWith('google.protobuf.') || !isObject(value)) continue;
    for (const [key, item] of Object.entries(value)) {
      const field = message.fields.find((candidate) => candidate.jsonName === key || candidate.name === key);
      if (field === undefined) {
        problems[`${prefix}${key.isWellFormed() && !key.includes('\u0000') ? key : JSON.stringify(key)}`] ??= notAFieldOf(message.typeName);
        continue;
      }
      const path = `${prefix}${field.name}`;
      const enumProblem = (at: string, candidate: unknown, descEnum: DescEnum) => {
        if (typeof candidate === 'string' && !descEnum.values.some((known) => known.name === candidate)) {
          problems[at] ??= `must be one of ${descEnum.values.map((known) => known.name).join(', ')}`;
        }
      };
      const integerProblem = (at: string, candidate: unknown, scalar: ScalarType) => {
        if (typeof candidate === 'string' && INTEGER_SCALARS.has(scalar) && !PROTO_JSON_NUMBER.test(candidate)) problems[at] ??= 'must be a decimal number';
      };
      if (field.fieldKind === 'enum') enumProblem(path, item, field.enum);
      else if (field.fieldKind === 'scalar') integerProblem(path, item, field.scalar);
      else if (field.fieldKind === 'message') pending.push([field.message, item, `${path}.`, depth + 1]);
      else if (field.fieldKind === 'list' && Array.isArray(item)) {
        item.forEach((element, index) => {
          if (field.listKind === 'enum') enumProblem(`${path}[${index}]`, element, field.enum);
          else if (field.listKind === 'scalar') integerProblem(`${path}[${index}]`, element, field.scalar);
          else pending.push([field.message, element, `${path}[${index}].`, depth + 1]);
        });
      } else if (field.fieldKind === 'map' && isObject(item)) {
        for (const [mapKey, element] of Object.entries(item)) {
          const at = `${path}[${JSON.stringify(mapKey)}]`;
          if (field.mapKind === 'enum') enumProblem(at, element, field.enum);
          else if (field.mapKind === 'message') pending.push([field.message, element, `${at}.`, depth + 1]);
        }
      }
    }
  }
  return problems;
}

/** The integer types, whose ProtoJSON form may be a string, of a number written in decimal. */
const INTEGER_SCALARS = new Set([
  ScalarType.INT32,
  ScalarType.INT64,
  ScalarType.UINT32,
  ScalarType.UINT64,
  ScalarType.SINT32,
  ScalarType.SINT64,
  ScalarType.FIXED32,
  ScalarType.FIXED64,
  ScalarType.SFIXED32,
  ScalarType.SFIXED64,
]);
/**
 * A number as ProtoJSON writes one in a string: decimal, with an optional fraction and exponent.
 * protobuf-es reads such strings with `Number()`, which also takes "0x10", "0b10", "0o2", "+2"
 * and surrounding spaces: other spellings of the same id, which the REST API refuses too.
 */
const PROTO_JSON_NUMBER = /^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
