// OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set. One Tracing per
// Application (so the layers of a test topology, sharing one Node process, still report as the
// processes they stand for), never registered globally.
//
// Spans are made by hand at the few places a request crosses something: the public edge (REST
// and RPC server spans), each call to the layer below (a client span, whose W3C `traceparent`
// header the next layer's server span continues), the cache and the database (spans at the
// repositories). No auto-instrumentation: require hooks do not see ESM under Node's type
// stripping, and these few spans say what an operator needs.
//
// The current span travels in the request's CallContext, which exists anyway, so no context
// manager is installed. With tracing off nothing here is called: the edges and the transport
// test one `undefined`, and the repositories and cache are not wrapped at all. Nor is the SDK
// loaded: only the API (span kinds and codes) is imported here; the SDK, the exporter and the
// propagator come with `createTracing`, which saves a process without tracing about a tenth of a
// second of start-up.
import {
  diag,
  DiagLogLevel,
  isSpanContextValid,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Span,
  type TextMapPropagator,
  type Tracer,
} from '@opentelemetry/api';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { currentCallContext, detachedFromRequest } from './call-context.ts';
import type { Cache } from './cache.ts';
import { rateLimitedWarning, type Logger } from './logger.ts';
import { wrapMethods } from './method-wrapper.ts';

export { SpanKind, SpanStatusCode, type Span };

export interface TracingOptions {
  /** Where spans are POSTed (OTLP/HTTP, JSON): <endpoint>/v1/traces. */
  url: string;
  serviceName: string;
  serviceVersion: string;
  /** The deployment layer this process holds, as a resource attribute. */
  layer: string;
  /** Batch delay; 0 exports each span as it ends (tests). */
  scheduleDelayMs: number;
  /** Where a collector's failures are told (at most once a minute). */
  logger?: Logger | undefined;
}

/** How often, at most, spans lost to a failing collector are logged. */
const EXPORT_WARNING_INTERVAL_MS = 60_000;
/** How long closing may take to export the last spans. */
const CLOSE_TIMEOUT_MS = 5_000;

const headerSetter = {
  set: (carrier: Record<string, string>, key: string, value: string) => {
    carrier[key] = value;
  },
};
/** A request's headers as the propagator reads them: one header by (lower-case) name. */
type HeaderReader = (name: string) => string | null | undefined;
const headerGetter = {
  get: (read: HeaderReader, key: string) => read(key) ?? undefined,
  keys: () => ['traceparent', 'tracestate'],
};

/** Tracing as `options` say, with the OpenTelemetry SDK loaded now (see above). */
export async function createTracing(options: TracingOptions): Promise<Tracing> {
  const [
    { W3CTraceContextPropagator },
    { OTLPTraceExporter },
    { resourceFromAttributes },
    { BasicTracerProvider, BatchSpanProcessor, SimpleSpanProcessor },
    { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION },
  ] = await Promise.all([
    import('@opentelemetry/core'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/semantic-conventions'),
  ]);
  // The SDK tells export failures and spans dropped from a full queue to its diagnostic logger
  // only, which nothing set: a collector that refused or dropped every span lost them without a
  // word (helper 133). Its warnings and errors go to the log, at most once a minute.
  const warn = rateLimitedWarning(options.logger, 'tracing: spans are not being exported', EXPORT_WARNING_INTERVAL_MS);
  // Outside any request: the SDK's export timer is armed when a request's span ends, and a failed
  // batch holds many requests' spans, so its line named the first of them (helper 160).
  const tell = (message: string, ...args: unknown[]) =>
    detachedFromRequest(() => warn({ reason: [message, ...args.map((arg) => (arg instanceof Error ? arg.message : String(arg)))].join(' ').slice(0, 500) }));
  diag.setLogger(
    { error: tell, warn: tell, info: () => undefined, debug: () => undefined, verbose: () => undefined },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
  const exporter = new OTLPTraceExporter({ url: options.url });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: options.serviceName,
      [ATTR_SERVICE_VERSION]: options.serviceVersion,
      'arcana.deployment.layer': options.layer,
      'process.pid': process.pid,
    }),
    // A client chooses some attribute values (the path, up to the 16 KiB of headers Node takes):
    // each is cut at 1 KiB, so a span stays small whatever the request was.
    spanLimits: { attributeValueLengthLimit: SPAN_ATTRIBUTE_MAX_LENGTH },
    spanProcessors: [options.scheduleDelayMs === 0 ? new SimpleSpanProcessor(exporter) : new BatchSpanProcessor(exporter, { scheduledDelayMillis: options.scheduleDelayMs })],
  });
  return new Tracing(provider, new W3CTraceContextPropagator(), options.serviceVersion, options.logger);
}

/** The longest attribute value a span carries (see createTracing). */
const SPAN_ATTRIBUTE_MAX_LENGTH = 1024;

export class Tracing {
  readonly #provider: BasicTracerProvider;
  readonly #propagator: TextMapPropagator;
  readonly #logger: Logger | undefined;
  readonly tracer: Tracer;

  /** Made by `createTracing`. */
  constructor(provider: BasicTracerProvider, propagator: TextMapPropagator, serviceVersion: string, logger?: Logger) {
    this.#provider = provider;
    this.#propagator = propagator;
    this.#logger = logger;
    this.tracer = provider.getTracer('arcana-cloud', serviceVersion);
  }

  /**
   * A server span for a request that arrived with `headers`. From a caller inside the deployment's
   * trust (`callerTrusted`: a layer above, or a proxy TRACE_TRUSTED_PROXIES names), the child of its span
   * when they carry a valid `traceparent`. From anyone else, a new trace that links to the
   * caller's span: a public client chose the trace id of its requests' spans and log lines (into
   * another request's trace, say), switched their tracing off with a sampled flag of 0, and had
   * its `tracestate` stored and passed on to every layer (helper 92). The link keeps the
   * caller's trace findable from ours.
   */
  startServerSpan(name: string, header: HeaderReader, attributes: Attributes, callerTrusted: boolean): Span {
    const parent = this.#propagator.extract(ROOT_CONTEXT, header, headerGetter);
    if (callerTrusted) return this.tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
    const remote = trace.getSpanContext(parent);
    // The link names the caller's span without its tracestate, which is the client's to choose.
    const links =
      remote !== undefined && isSpanContextValid(remote) ? [{ context: { traceId: remote.traceId, spanId: remote.spanId, traceFlags: remote.traceFlags, isRemote: true } }] : [];
    return this.tracer.startSpan(name, { kind: SpanKind.SERVER, attributes, links, root: true }, ROOT_CONTEXT);
  }

  /** A child of the current request's span, or undefined outside a traced request. */
  startChildSpan(name: string, kind: SpanKind, attributes?: Attributes): Span | undefined {
    const parent = currentCallContext()?.span;
    if (parent === undefined) return undefined;
    return this.tracer.startSpan(name, { kind, attributes }, trace.setSpan(ROOT_CONTEXT, parent));
  }

  /** Sets `traceparent` (and `tracestate`) on an outgoing call's headers, naming `span` its parent. */
  inject(span: Span, headers: Record<string, string>): void {
    this.#propagator.inject(trace.setSpan(ROOT_CONTEXT, span), headers, headerSetter);
  }

  /**
   * Exports what is still buffered and stops, within CLOSE_TIMEOUT_MS. A collector that is down,
   * failing or silent costs the last spans, not the shutdown: its failure made the process exit 1
   * on SIGTERM (helper 133).
   */
  async close(): Promise<void> {
    const closed = this.#provider.shutdown().then(
      () => true,
      (error: unknown) => {
        this.#logger?.warn({ err: error instanceof Error ? error.message : String(error) }, 'tracing: the last spans could not be exported');
        return true;
      },
    );
    const timedOut = sleep(CLOSE_TIMEOUT_MS, false, { ref: false });
    if (!(await Promise.race([closed, timedOut]))) this.#logger?.warn('tracing: the collector did not take the last spans in time');
  }
}

/** Ends `span` as failed with `error`'s message (no stack: spans leave the deployment). */
export function endWithError(span: Span, error: unknown, code?: string): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message: code ?? (error instanceof Error ? error.name : 'error') });
  span.end();
}

/** Runs `work` in a child span of the current request's span (none outside one). */
async function inSpan<T>(tracing: Tracing, name: string, kind: SpanKind, attributes: Attributes, work: () => Promise<T>, after?: (span: Span, value: T) => void): Promise<T> {
  const span = tracing.startChildSpan(name, kind, attributes);
  if (span === undefined) return work();
  try {
    const value = await work();
    after?.(span, value);
    span.end();
    return value;
  } catch (error) {
    endWithError(span, error);
    throw error;
  }
}

/** The cache with a span per operation (`cache.hit` on reads). */
export function tracedCache(cache: Cache, tracing: Tracing, system: string): Cache {
  const attributes = { 'db.system.name': system };
  return {
    get: <T>(key: string) =>
      inSpan(
        tracing,
        'cache get',
        SpanKind.CLIENT,
        attributes,
        () => cache.get<T>(key),
        (span, value) => span.setAttribute('cache.hit', value !== undefined),
      ),
    set: (key, value, ttlSeconds) => inSpan(tracing, 'cache set', SpanKind.CLIENT, attributes, () => cache.set(key, value, ttlSeconds)),
    add: (key, value, ttlSeconds) => inSpan(tracing, 'cache add', SpanKind.CLIENT, attributes, () => cache.add(key, value, ttlSeconds)),
    forget: (keys, ttlSeconds) => inSpan(tracing, 'cache forget', SpanKind.CLIENT, attributes, () => cache.forget(keys, ttlSeconds)),
    delete: (...keys) => inSpan(tracing, 'cache delete', SpanKind.CLIENT, attributes, () => cache.delete(...keys)),
  };
}

/**
 * A repository whose every method runs in a database span named after it (`UserRepository.findById`):
 * the span at the repository, where the operation still has a name a reader knows. The wrapped
 * methods are made once, here.
 */
export function tracedRepository<R extends object>(repository: R, name: string, tracing: Tracing, system: string): R {
  return wrapMethods(repository, (method, call) => {
    const attributes = { 'db.system.name': system, 'db.operation.name': `${name}.${method}` };
    const spanName = `db ${name}.${method}`;
    return (...args) => inSpan(tracing, spanName, SpanKind.CLIENT, attributes, () => Promise.resolve(call(args)));
  });
}

/** For log lines: the trace and span of the request being served, when it is traced. */
export function traceLogFields(): { traceId?: string; spanId?: string } {
  const span = currentCallContext()?.span;
  if (span === undefined) return {};
  const { traceId, spanId } = span.spanContext();
  return { traceId, spanId };
}
