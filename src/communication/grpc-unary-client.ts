// Unary gRPC calls between layers, made directly on a node:http2 session. connect-node's
// transport runs every call, unary ones too, through its streaming machinery (async iterables,
// a linked AbortController that is aborted when the call ends, WHATWG Headers conversions at
// each step); a CPU profile of the controller layer under load put that at about 40% of the
// controller's time. A unary call needs one request frame and one answer frame: this sends and
// reads exactly those, and reports errors as connect-node does (ConnectError with the codes and
// details of the gRPC status, socket errors kept as the cause) so that layer-errors.ts and the
// retry policy read them the same way.
import { create, fromBinary, isMessage, toBinary, type DescMethodUnary, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { Code, ConnectError, type UnaryResponse } from '@connectrpc/connect';
import { codeFromHttpStatus, findTrailerError } from '@connectrpc/connect/protocol-grpc';
import { connect as connectHttp2, constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import type { Duplex } from 'node:stream';
import { timerTimeout } from '../infrastructure/call-context.ts';
import { withoutStack } from '../domain/errors.ts';
import { webHeadersFromNode } from '../rpc/node-headers.ts';
import { NOT_CONNECTED } from './layer-errors.ts';

/** The length-prefixed message framing of gRPC: a flags byte, then a 32-bit big-endian length. */
const FRAME_HEADER_BYTES = 5;
/** Receive windows: per call, and for the whole connection (see #openSession). */
const STREAM_WINDOW_BYTES = 1 << 20;
const SESSION_WINDOW_BYTES = 16 << 20;
/** How long a new connection may take to bring the process's SETTINGS, its TCP connection included. */
const HANDSHAKE_TIMEOUT_MS = 2_000;

export interface GrpcUnaryClientOptions {
  /** The base URL of one process, e.g. http://service:3001. */
  baseUrl: string;
  /** Opens the session's TCP connection (see connectWithoutDelay in layer-transport.ts). */
  createConnection: (authority: URL) => Duplex;
  /** Told when a call could not reach the process or lost its connection (see ResolvedEndpoints). */
  onUnreachable?: (() => void) | undefined;
}

/** Unary calls over one HTTP/2 session to one process, reopened when it closes or goes away. */
export class GrpcUnaryClient {
  readonly #url: URL;
  readonly #createConnection: (authority: URL) => Duplex;
  readonly #onUnreachable: (() => void) | undefined;
  #session: ClientHttp2Session | undefined;
  /**
   * Why each session failed, for the streams it takes down with it: per session, for a refused
   * new connection must never be taken for the cause of a call on an older one that was made
   * (helper 132: it was, so a write cut by a layer's shutdown counted as never sent and was
   * carried out again elsewhere).
   */
  readonly #sessionErrors = new WeakMap<ClientHttp2Session, Error>();
  #active = 0;
  /** The sessions whose connection was made: the process sent its SETTINGS. */
  readonly #connected = new WeakSet<ClientHttp2Session>();
  /** Per session, settled when the process has sent its SETTINGS, or the connection failed first. */
  readonly #handshakes = new WeakMap<ClientHttp2Session, Promise<void>>();

  constructor(options: GrpcUnaryClientOptions) {
    this.#url = new URL(options.baseUrl);
    this.#createConnection = options.createConnection;
    this.#onUnreachable = options.onUnreachable;
  }

  /**
   * Calls `method` with `input`; resolves with the answer and its headers and trailers, or
   * rejects with a ConnectError: the gRPC status the server sent, `deadline_exceeded` after
   * `timeoutMs`, `canceled` when `signal` aborts, `unavailable` when the connection fails.
   */
  unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Record<string, string>,
    input: MessageInitShape<I> | MessageShape<I>,
  ): Promise<UnaryResponse<I, O>> {
    if (signal?.aborted === true) return Promise.reject(ConnectError.from(signal.reason, Code.Canceled));
    const message = isMessage(input, method.input) ? input : create(method.input, input);
    const payload = toBinary(method.input, message);
    const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
    frame[0] = 0;
    frame.writeUInt32BE(payload.length, 1);
    frame.set(payload, FRAME_HEADER_BYTES);

    const requestHeader: Record<string, string> = {
      ...header,
      [constants.HTTP2_HEADER_METHOD]: 'POST',
      [constants.HTTP2_HEADER_PATH]: `${this.#url.pathname.replace(/\/$/, '')}/${method.parent.typeName}/${method.name}`,
      'content-type': 'application/grpc+proto',
      te: 'trailers',
    };
    if (timeoutMs !== undefined) requestHeader['grpc-timeout'] = `${Math.max(1, Math.ceil(timeoutMs))}m`;

    return new Promise((resolve, reject) => {
      const session = this.#openSession();
      let stream: ClientHttp2Stream | undefined;
      let status = 0;
      let responseHeader: Headers | undefined;
      let trailer: Headers | undefined;
      const chunks: Buffer[] = [];
      let settled = false;
      let timer: NodeJS.Timeout | undefined;

      const settle = (outcome: () => void) => {
        if (settled) return;
        settled = true;
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        outcome();
      };
      const fail = (error: ConnectError) => {
        settle(() => reject(error));
        if (stream !== undefined && !stream.closed) stream.close(constants.NGHTTP2_CANCEL);
      };
      const onAbort = () => fail(ConnectError.from(signal?.reason, Code.Canceled));
      signal?.addEventListener('abort', onAbort, { once: true });
      const waitMs = timerTimeout(timeoutMs);
      if (waitMs !== undefined) timer = setTimeout(() => fail(new ConnectError('the operation timed out', Code.DeadlineExceeded)), waitMs);

      const send = () => {
        if (settled) return;
        let opened: ClientHttp2Stream;
        try {
          opened = session.request(requestHeader);
        } catch (error) {
          fail(this.#connectionFailure(error, session));
          return;
        }
        stream = opened;
        this.#streamOpened(session);
        opened.on('response', (headers) => {
          status = Number(headers[constants.HTTP2_HEADER_STATUS]);
          responseHeader = webHeadersFromNode(headers);
        });
        opened.on('data', (chunk: Buffer) => chunks.push(chunk));
        opened.on('trailers', (headers: IncomingHttpHeaders) => {
          trailer = webHeadersFromNode(headers);
        });
        opened.on('error', (error) => fail(this.#streamFailure(error, session, opened)));
        opened.on('close', () => {
          this.#streamClosed(session);
          if (settled) return;
          if (responseHeader === undefined || opened.rstCode !== constants.NGHTTP2_NO_ERROR) {
            fail(this.#streamFailure(new Error(`the stream closed with HTTP/2 code ${opened.rstCode}`), session, opened));
            return;
          }
          settle(() => {
            try {
              resolve(answer(method, status, responseHeader as Headers, trailer, Buffer.concat(chunks)));
            } catch (error) {
              reject(ConnectError.from(error));
            }
          });
        });
        opened.end(frame);
      };
      // A request goes out only once the process has answered the connection with its SETTINGS:
      // one that accepts TCP and never speaks HTTP/2 (a wedged event loop; the kernel completes
      // the handshake) held every call sent to it for its whole deadline, and such a call could not
      // be sent elsewhere, for the process might read it when it wakes (helper 135).
      if (this.#connected.has(session)) send();
      else
        this.#handshakes.get(session)?.then(send, (error: unknown) => {
          if (!settled) fail(this.#connectionFailure(error, session));
        });
    });
  }

  /** Closes the session; calls in flight fail as the connection goes. */
  close(): void {
    this.#session?.destroy();
    this.#session = undefined;
  }

  /** `ready`: connected; `connecting`: a connection is being made; `idle`: none is. */
  state(): 'idle' | 'connecting' | 'ready' {
    const session = this.#session;
    if (session === undefined || session.closed || session.destroyed) return 'idle';
    return this.#connected.has(session) ? 'ready' : 'connecting';
  }

  /** Starts making the connection, if none is, without a call. */
  connect(): void {
    this.#openSession();
  }

  /** Closes the session once the calls on it have finished; a later call opens a new one. */
  drain(): void {
    this.#session?.close();
    this.#session = undefined;
  }

  #openSession(): ClientHttp2Session {
    const current = this.#session;
    if (current !== undefined && !current.closed && !current.destroyed) return current;
    // HTTP/2 flow control: with the defaults (64 KiB per stream and per connection) the answers
    // of many concurrent calls (pages of users) exceed the connection's window, and the peer must
    // wait for WINDOW_UPDATEs that this busy event loop sends late. A layer's answers are bounded
    // by the server's message limit, so generous windows cost no more memory than the answers.
    const session = connectHttp2(this.#url, { createConnection: () => this.#createConnection(this.#url), settings: { initialWindowSize: STREAM_WINDOW_BYTES } });
    // Connected once the process's first SETTINGS frame has come, as gRPC counts an address
    // ready: 'connect' is only the TCP connection, which a wedged process's kernel completes
    // (helper 135). One that sends none in HANDSHAKE_TIMEOUT_MS is given up as not reached.
    const handshake = new Promise<void>((resolve, reject) => {
      const timeout = setTimeout(
        () => session.destroy(Object.assign(new Error(`no HTTP/2 settings from ${this.#url.host} within ${HANDSHAKE_TIMEOUT_MS} ms`), { code: 'ETIMEDOUT' })),
        HANDSHAKE_TIMEOUT_MS,
      ).unref();
      session.once('remoteSettings', () => {
        clearTimeout(timeout);
        this.#connected.add(session);
        session.setLocalWindowSize(SESSION_WINDOW_BYTES);
        resolve();
      });
      session.once('close', () => {
        clearTimeout(timeout);
        reject(this.#sessionErrors.get(session) ?? new Error('the connection closed before the process answered it'));
      });
    });
    // Calls waiting on it see the rejection; a session no call waits on must not report it.
    handshake.catch(() => undefined);
    this.#handshakes.set(session, handshake);
    const forget = () => {
      if (this.#session === session) this.#session = undefined;
    };
    session.on('error', (error: Error) => {
      this.#sessionErrors.set(session, error);
      forget();
      // A connection that could not be made, with or without a call on it (calls go only to
      // connected addresses, others are connected in the background): its address is passed
      // over for a while, not connected to again at every call (helper 132).
      if (!this.#connected.has(session)) this.#onUnreachable?.();
    });
    // A server shutting down sends GOAWAY: streams it already took finish; new ones go to a
    // new session.
    session.on('goaway', forget);
    session.on('close', forget);
    // An idle session does not hold the process open; one with calls in flight does.
    session.unref();
    this.#session = session;
    this.#active = 0;
    return session;
  }

  #streamOpened(session: ClientHttp2Session): void {
    if (session === this.#session && this.#active++ === 0) session.ref();
  }

  #streamClosed(session: ClientHttp2Session): void {
    if (session === this.#session && --this.#active === 0 && !session.destroyed) session.unref();
  }

  /**
   * A call's stream failed. One the process refused without processing it (RST_STREAM
   * REFUSED_STREAM, or above the last stream a GOAWAY of a closing process took, which nghttp2
   * closes with the same code) was not carried out and "can be safely retried" (RFC 9113 §8.7):
   * it may go again, elsewhere, write or not, and says nothing against the process (helper 135:
   * a write refused so by a layer shutting down failed 503 though another replica was there,
   * and its healthy address was passed over).
   */
  #streamFailure(error: unknown, session: ClientHttp2Session, stream: ClientHttp2Stream): ConnectError {
    if (stream.rstCode !== constants.NGHTTP2_REFUSED_STREAM) return this.#connectionFailure(error, session);
    const cause = Object.assign(new Error('the process refused the call unprocessed (REFUSED_STREAM)'), { code: NOT_CONNECTED, cause: error });
    return new ConnectError(cause.message, Code.Unavailable, undefined, undefined, cause);
  }

  /** A failure to reach the process or to keep the connection, as connect-node reports one. */
  #connectionFailure(error: unknown, session: ClientHttp2Session): ConnectError {
    this.#onUnreachable?.();
    let cause = this.#sessionErrors.get(session) ?? error;
    // A session that never connected sent nothing: any call on it may go again, elsewhere (a
    // refused connection said so; an unreachable address, a connect that timed out did not).
    if (!this.#connected.has(session))
      cause = Object.assign(new Error(`could not connect: ${cause instanceof Error ? cause.message : String(cause)}`), { code: NOT_CONNECTED, cause });
    return new ConnectError(cause instanceof Error ? cause.message : String(cause), Code.Unavailable, undefined, undefined, cause);
  }
}

/** The answer of a unary call that ended normally: its message, or the error its status carries. */
function answer<I extends DescMessage, O extends DescMessage>(
  method: DescMethodUnary<I, O>,
  status: number,
  header: Headers,
  trailer: Headers | undefined,
  body: Buffer,
): UnaryResponse<I, O> {
  if (status !== 200) throw new ConnectError(`HTTP ${status}`, codeFromHttpStatus(status), header);
  // A "trailers-only" answer (an error before any message) carries its status in the headers.
  const statusFields = trailer ?? header;
  // The callee's answer, not a fault here: no stack trace (see AppError).
  const error = withoutStack(() => findTrailerError(statusFields));
  if (error !== undefined) {
    header.forEach((value, key) => error.metadata.append(key, value));
    throw error;
  }
  if (statusFields.get('grpc-status') === null) throw new ConnectError('protocol error: missing status', Code.Internal);
  if (body.length < FRAME_HEADER_BYTES) throw new ConnectError('protocol error: missing output message for unary method', Code.Unimplemented);
  if ((body[0] ?? 0) & 0b1) throw new ConnectError('protocol error: received a compressed message that was not asked for', Code.Internal);
  const length = body.readUInt32BE(1);
  if (body.length !== FRAME_HEADER_BYTES + length) throw new ConnectError('protocol error: expected exactly one output message', Code.Unimplemented);
  const message = fromBinary(method.output, body.subarray(FRAME_HEADER_BYTES));
  return { stream: false, service: method.parent, method, header, message, trailer: trailer ?? new Headers() };
}
