// A Connect Transport that calls service implementations in this process: no serialization, no
// HTTP. A generated client over it behaves like one over the network (the same interceptors
// run, the same HandlerContext reaches the implementation, errors come back as thrown), so a
// caller holds one typed client whichever way the layers are wired; configuration picks the
// transport. Messages pass by reference: the implementation gets the caller's request object,
// and the caller the implementation's response object.
import { create, type DescMessage, type DescMethod, type DescMethodStreaming, type DescMethodUnary, type DescService, type MessageInitShape } from '@bufbuild/protobuf';
import {
  Code,
  ConnectError,
  createContextValues,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
  type StreamResponse,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from '@connectrpc/connect';

/** A service and its implementation, as a router would register them. */
export interface InProcessService<S extends DescService = DescService> {
  service: S;
  impl: Partial<ServiceImpl<S>>;
}

/** Pairs a descriptor with its implementation, keeping the two type-checked against each other. */
export function inProcessService<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): InProcessService {
  return { service, impl };
}

type UnaryHandler = (request: UnaryRequest) => Promise<UnaryResponse>;
/** Returns the response, or a promise of it. */
type UnaryImplementation = (request: unknown, context: HandlerContext) => unknown;

/** A signal that never aborts, for calls made without one: no AbortController per call. */
const NEVER = new AbortController().signal;

/**
 * The transport. `interceptors` are the server side's (authentication, say), applied in order as
 * a router would apply them. Streaming methods are not offered in-process.
 */
export function createInProcessTransport(services: readonly InProcessService[], options: { interceptors?: Interceptor[] } = {}): Transport {
  const handlers = new Map<DescMethod, UnaryHandler>();
  for (const { service, impl } of services) {
    for (const method of service.methods) {
      const implementation = (impl as Record<string, UnaryImplementation | undefined>)[method.localName];
      if (method.methodKind !== 'unary' || implementation === undefined) continue;
      const call: UnaryHandler = async (request) => {
        const context = handlerContext(request);
        const output = await implementation(request.message, context);
        return {
          stream: false,
          service,
          method: request.method,
          header: context.responseHeader,
          trailer: context.responseTrailer,
          message: create(method.output, output as MessageInitShape<DescMessage>),
        };
      };
      handlers.set(
        method,
        (options.interceptors ?? []).reduceRight<UnaryHandler>((next, interceptor) => interceptor(next as never) as UnaryHandler, call),
      );
    }
  }

  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0],
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      const handler = handlers.get(method);
      if (handler === undefined) throw new ConnectError(`${method.parent.typeName}/${method.name} is not served in this process`, Code.Unimplemented);
      if (signal?.aborted === true) throw ConnectError.from(signal.reason, Code.Canceled);
      if (timeoutMs !== undefined && timeoutMs <= 0) throw new ConnectError('the deadline passed before the call was made', Code.DeadlineExceeded);
      const request: InProcessRequest = {
        stream: false,
        service: method.parent,
        method,
        requestMethod: 'POST',
        url: `/${method.parent.typeName}/${method.name}`,
        signal: signal ?? NEVER,
        header: new Headers(header),
        contextValues: contextValues ?? createContextValues(),
        message: create(method.input, input),
        deadline: timeoutMs === undefined ? undefined : Date.now() + timeoutMs,
      };
      return (await handler(request)) as UnaryResponse<I, O>;
    },
    stream<I extends DescMessage, O extends DescMessage>(method: DescMethodStreaming<I, O>): Promise<StreamResponse<I, O>> {
      return Promise.reject(new ConnectError(`${method.parent.typeName}/${method.name}: streaming is not offered in-process`, Code.Unimplemented));
    },
  };
}

interface InProcessRequest extends UnaryRequest {
  /** Epoch milliseconds by which the caller wants its answer. */
  deadline: number | undefined;
}

/**
 * The HandlerContext an implementation sees. Built by hand rather than with createHandlerContext,
 * which links two AbortControllers and starts a timer per call: the caller's own signal and
 * deadline already say when to stop, and an in-process call has no connection of its own to abort.
 */
function handlerContext(request: UnaryRequest): HandlerContext {
  const deadline = (request as InProcessRequest).deadline;
  return {
    service: request.service,
    method: request.method,
    signal: request.signal,
    timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
    requestMethod: request.requestMethod,
    requestHeader: request.header,
    responseHeader: new Headers(),
    responseTrailer: new Headers(),
    protocolName: 'in-process',
    values: request.contextValues,
    url: request.url,
  };
}
