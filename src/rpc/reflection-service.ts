// gRPC server reflection (grpc.reflection.v1 and v1alpha), so that `buf curl --reflect`, grpcurl
// and grpcui can list our services and call them without a copy of the protos.
import { create, fromBinary, toBinary, type DescFile } from '@bufbuild/protobuf';
import { nestedTypes } from '@bufbuild/protobuf/reflect';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { file_google_rpc_error_details } from '../../gen/proto/google/rpc/error_details_pb.js';
import { file_google_rpc_status } from '../../gen/proto/google/rpc/status_pb.js';
import {
  ErrorResponseSchema,
  ExtensionNumberResponseSchema,
  file_grpc_reflection_v1_reflection,
  FileDescriptorResponseSchema,
  ListServiceResponseSchema,
  type ServerReflection as ServerReflectionV1,
  type ServerReflectionRequest,
  ServerReflectionRequestSchema as RequestV1Schema,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema as ResponseV1Schema,
} from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import {
  file_grpc_reflection_v1alpha_reflection,
  type ServerReflection as ServerReflectionV1alpha,
  ServerReflectionRequestSchema as RequestV1alphaSchema,
  ServerReflectionResponseSchema as ResponseV1alphaSchema,
} from '../../gen/proto/grpc/reflection/v1alpha/reflection_pb.js';

type Answer = ServerReflectionResponse['messageResponse'];

/** What the reflection service knows, indexed once when it is created. */
interface Index {
  /** Every file, dependencies included, by its path such as 'arcana/auth/v1/auth_service.proto'. */
  files: Map<string, DescFile>;
  /** The file declaring each fully-qualified service, method, message, enum and extension. */
  symbols: Map<string, DescFile>;
  /** Every fully-qualified message type, for all_extension_numbers_of_type. */
  messages: Set<string>;
  /** The file declaring each extension, by '<extendee>#<field number>'. */
  extensions: Map<string, DescFile>;
  /** The field numbers of the known extensions of each message type. */
  extensionNumbers: Map<string, number[]>;
  /** The services served: those declared in the files given, not in their dependencies. */
  services: string[];
}

/**
 * Reflection services (v1 and the older v1alpha) describing the services in `files`; the reflection
 * services themselves are always included.
 */
export function createReflectionServices(
  files: DescFile[],
  options: { /** Aborted when the process starts to drain: open streams end, `unavailable`. */ draining?: AbortSignal | undefined } = {},
): {
  v1: ServiceImpl<typeof ServerReflectionV1>;
  v1alpha: ServiceImpl<typeof ServerReflectionV1alpha>;
} {
  // With the types every error's details are made of (google.rpc.Status in
  // grpc-status-details-bin; BadRequest, ErrorInfo, RetryInfo inside it), which no served file
  // imports: a client working from reflection alone could not decode any error (helper 126).
  const index = buildIndex([...files, file_grpc_reflection_v1_reflection, file_grpc_reflection_v1alpha_reflection, file_google_rpc_status, file_google_rpc_error_details]);
  const serialized = new Map<DescFile, Uint8Array>();

  // Clients resolve the types of a file's fields themselves, so a file always comes with its
  // transitive dependencies (google/protobuf/timestamp.proto, for example), the file asked for
  // first. The protocol allows leaving out files already sent on the stream; sending them again
  // costs a few bytes and spares us tracking what each client has seen.
  function withDependencies(file: DescFile): Answer {
    const seen = new Set<DescFile>();
    const queue = [file];
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
      if (seen.has(next)) continue;
      seen.add(next);
      queue.push(...next.dependencies);
    }
    const fileDescriptorProto = [...seen].map((desc) => {
      let bytes = serialized.get(desc);
      if (bytes === undefined) {
        bytes = toBinary(FileDescriptorProtoSchema, desc.proto);
        serialized.set(desc, bytes);
      }
      return bytes;
    });
    return { case: 'fileDescriptorResponse', value: create(FileDescriptorResponseSchema, { fileDescriptorProto }) };
  }

  /** A name as an answer repeats it: whole when it is of a sane length (each stream answers at most 200). */
  const named = (name: string) => (name.length <= 200 ? JSON.stringify(name) : '(a name of more than 200 characters)');

  function notFound(message: string): Answer {
    return { case: 'errorResponse', value: create(ErrorResponseSchema, { errorCode: Code.NotFound, errorMessage: message }) };
  }

  function answer(request: ServerReflectionRequest['messageRequest']): Answer {
    switch (request.case) {
      case 'listServices':
        return {
          case: 'listServicesResponse',
          value: create(ListServiceResponseSchema, { service: index.services.map((name) => ({ name })) }),
        };
      case 'fileByFilename': {
        const file = index.files.get(request.value);
        return file === undefined ? notFound(`file ${named(request.value)} not found`) : withDependencies(file);
      }
      case 'fileContainingSymbol': {
        const file = index.symbols.get(request.value);
        return file === undefined ? notFound(`symbol ${named(request.value)} not found`) : withDependencies(file);
      }
      case 'fileContainingExtension': {
        const { containingType, extensionNumber } = request.value;
        const file = index.extensions.get(`${containingType}#${extensionNumber}`);
        return file === undefined ? notFound(`extension ${extensionNumber} of ${named(containingType)} not found`) : withDependencies(file);
      }
      case 'allExtensionNumbersOfType': {
        if (!index.messages.has(request.value)) return notFound(`message type ${named(request.value)} not found`);
        return {
          case: 'allExtensionNumbersResponse',
          value: create(ExtensionNumberResponseSchema, {
            baseTypeName: request.value,
            extensionNumber: index.extensionNumbers.get(request.value) ?? [],
          }),
        };
      }
      case undefined:
        return {
          case: 'errorResponse',
          value: create(ErrorResponseSchema, { errorCode: Code.InvalidArgument, errorMessage: 'no message_request set' }),
        };
    }
  }

  // Each request gets exactly one response, in order, echoing the host and the request itself.
  function respond(request: ServerReflectionRequest): ServerReflectionResponse {
    return create(ResponseV1Schema, { validHost: request.host, originalRequest: request, messageResponse: answer(request.messageRequest) });
  }

  return {
    v1: {
      async *serverReflectionInfo(requests, context) {
        for await (const request of readable(requests, context.signal, options.draining)) yield respond(request);
      },
    },
    v1alpha: {
      // The two versions differ only in their package name, so their messages are identical on
      // the wire: v1alpha traffic is transcoded through the binary format and answered by v1.
      async *serverReflectionInfo(requests, context) {
        for await (const request of readable(requests, context.signal, options.draining)) {
          const response = respond(fromBinary(RequestV1Schema, toBinary(RequestV1alphaSchema, request)));
          yield fromBinary(ResponseV1alphaSchema, toBinary(ResponseV1Schema, response));
        }
      },
    },
  };
}

/**
 * Requests on one reflection stream at most. A client lists the services and asks for their files:
 * a few dozen requests. The rate limit counts calls, so without this one call could ask for
 * thousands of file sets (each a few KB) for the price of one.
 */
export const REFLECTION_REQUESTS_PER_STREAM = 200;

/**
 * The largest reflection request, compressed or not: one names a file or a symbol. Every answer
 * repeats its request and its `host`, so under the API's 100 KB body limit 36 bytes of Brotli
 * inflating to a 102 KB `host` came back 200 times a stream: 7 KB in, 41 MB out, and 0.6-0.9 s
 * of CPU for one rate-limit token (helper 206); and a message of 51 000 undeclared fields, refused
 * only once connect-es had parsed them all, cost 43 ms. Registered with the reflection services
 * (REFLECTION_HANDLER_OPTIONS), on the public API and on the internal layers.
 */
export const REFLECTION_READ_MAX_BYTES = 4 * 1024;

/** The handler options the reflection services are registered with (ConnectRouter.service). */
export const REFLECTION_HANDLER_OPTIONS = { readMaxBytes: REFLECTION_READ_MAX_BYTES } as const;

/**
 * The requests of a stream as its handler reads them. The one bidirectional stream bypasses the
 * gate that decodes unary calls (rpc-node-handler.ts), so a message connect-es cannot read (cut
 * short, compressed without an encoding, not protobuf or not JSON) surfaces here with the
 * parser's words, as `internal` or `invalid_argument`: it is `invalid_argument`, with a fixed text.
 * Limits the stream reports itself (the message size: `resource_exhausted`) keep their codes. A
 * stream waiting for its client's next request ends when the call does (the client gone, or its
 * deadline: `canceled`, `deadline_exceeded`) and when the process drains (`unavailable`), so that
 * a stream waiting on its client holds neither the process nor its shutdown. (One whose client
 * stopped reading waits to write instead, and is cut by the shutdown near its timeout: start.ts.)
 */
async function* readable<T>(requests: AsyncIterable<T>, signal: AbortSignal, draining: AbortSignal | undefined): AsyncIterable<T> {
  const ended = draining === undefined ? signal : AbortSignal.any([signal, draining]);
  const endOf = () => (signal.aborted ? ConnectError.from(signal.reason, Code.Canceled) : new ConnectError('the server is shutting down; open a new stream', Code.Unavailable));
  let stop: (() => void) | undefined;
  const stopped = new Promise<never>((_, reject) => {
    stop = () => reject(endOf());
  });
  // Rejections of `stopped` are read by the race below; this keeps an unread one from being reported.
  stopped.catch(() => undefined);
  const onEnd = () => stop?.();
  if (ended.aborted) onEnd();
  else ended.addEventListener('abort', onEnd, { once: true });
  const iterator = requests[Symbol.asyncIterator]();
  try {
    for (let count = 0; ; count++) {
      let next: IteratorResult<T>;
      try {
        next = await Promise.race([iterator.next(), stopped]);
      } catch (error) {
        if (ended.aborted) throw endOf();
        const connectError = ConnectError.from(error);
        if (connectError.code !== Code.Internal && connectError.code !== Code.Unknown && connectError.code !== Code.InvalidArgument) throw connectError;
        throw new ConnectError('a reflection request could not be read', Code.InvalidArgument);
      }
      if (next.done === true) return;
      if (count === REFLECTION_REQUESTS_PER_STREAM) {
        throw new ConnectError(`at most ${REFLECTION_REQUESTS_PER_STREAM} requests per reflection stream; open another`, Code.ResourceExhausted);
      }
      yield next.value;
    }
  } finally {
    ended.removeEventListener('abort', onEnd);
  }
}

function buildIndex(roots: DescFile[]): Index {
  const index: Index = { files: new Map(), symbols: new Map(), messages: new Set(), extensions: new Map(), extensionNumbers: new Map(), services: [] };

  // Dependencies are indexed too, so that clients can look up e.g. google.protobuf.Timestamp.
  // The first file of a name wins, should two copies of one file have been loaded.
  const visit = (file: DescFile): void => {
    if (index.files.has(file.proto.name)) return;
    index.files.set(file.proto.name, file);
    for (const type of nestedTypes(file)) {
      index.symbols.set(type.typeName, file);
      if (type.kind === 'message') {
        index.messages.add(type.typeName);
      } else if (type.kind === 'service') {
        for (const method of type.methods) index.symbols.set(`${type.typeName}.${method.name}`, file);
      } else if (type.kind === 'extension') {
        index.extensions.set(`${type.extendee.typeName}#${type.number}`, file);
        const numbers = index.extensionNumbers.get(type.extendee.typeName) ?? [];
        numbers.push(type.number);
        index.extensionNumbers.set(type.extendee.typeName, numbers);
      }
    }
    for (const dependency of file.dependencies) visit(dependency);
  };

  for (const file of roots) {
    visit(file);
    for (const service of file.services) {
      if (!index.services.includes(service.typeName)) index.services.push(service.typeName);
    }
  }
  return index;
}
