// One TCP port for everything: REST and Connect/gRPC-Web over HTTP/1.1, and gRPC (or Connect)
// over cleartext HTTP/2 with prior knowledge. Each new connection is peeked at: the HTTP/2
// client preface starts with "PRI * HTTP/2.0", which no HTTP/1.x request line can.
//
// Every connection is bounded: a client that stops sending, sends too slowly or opens too much is
// cut off after a deadline it cannot extend by trickling bytes, so that nobody can hold sockets,
// streams or memory for free. Which deadline covers what:
//   accepted, nothing decided yet   protocol detection deadline, from accept
//   HTTP/1.1 headers / whole request Node's headersTimeout / requestTimeout, from the first byte
//   HTTP/1.1 between requests       keepAliveTimeout
//   HTTP/2 session with no stream   idle timeout → GOAWAY; PINGs do not count as activity
//   HTTP/2 stream, request half     the same request timeout as HTTP/1.1 → RST_STREAM CANCEL
//   HTTP/2 streams per connection   SETTINGS_MAX_CONCURRENT_STREAMS
// A stream whose request has fully arrived is the application's business: a gRPC Watch may
// rightly stay open for hours.
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import {
  constants as http2Constants,
  createServer as createHttp2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
} from 'node:http2';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { loadConfig } from './config.ts';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** How long a peer gets to close its side after the server has ended an HTTP/2 connection. */
const LINGER_MS = 5_000;

/** The bounds on connections; src/config.ts documents each and holds the defaults. */
export interface ConnectionLimits {
  protocolDetectionTimeoutMs: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  http2IdleTimeoutMs: number;
  http2MaxConcurrentStreams: number;
}

export interface DualProtocolServerOptions {
  /** Without them, the configuration's defaults. */
  limits?: ConnectionLimits | undefined;
}

export interface DualProtocolServer {
  server: Server;
  /** Stops accepting, lets in-flight requests finish, then resolves. */
  close(): Promise<void>;
}

/** Serves `http1` on HTTP/1.1 connections and `http2` on prior-knowledge HTTP/2 ones. */
export function createDualProtocolServer(
  handlers: {
    http1: (req: IncomingMessage, res: ServerResponse) => void;
    http2: (req: Http2ServerRequest, res: Http2ServerResponse) => void;
  },
  options: DualProtocolServerOptions = {},
): DualProtocolServer {
  const limits = options.limits ?? loadConfig({}).server.connections;

  const h1 = createHttpServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      // Node checks those two deadlines on this interval (30 s by default), so a request could
      // outlive its deadline by that much; a check of the requests still arriving is cheap.
      connectionsCheckingInterval: Math.max(25, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4))),
    },
    handlers.http1,
  );
  h1.keepAliveTimeout = limits.keepAliveTimeoutMs;

  const h2 = createHttp2Server({ settings: { maxConcurrentStreams: limits.http2MaxConcurrentStreams } }, handlers.http2);
  const sessions = new Set<ServerHttp2Session>();
  h2.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    superviseSession(session, limits);
  });

  const detecting = new Set<Socket>();
  // noDelay: RPCs are small writes answered at once; Nagle's algorithm would hold each back
  // for the peer's delayed ACK (tens of milliseconds). Node's HTTP/1.1 server sets it for its own
  // sockets, but the HTTP/2 path below is handed the raw socket.
  const server = createNetServer({ pauseOnConnect: true, noDelay: true }, (socket) => {
    detecting.add(socket);
    peek(socket, limits.protocolDetectionTimeoutMs, (isHttp2, head) => {
      detecting.delete(socket);
      if (isHttp2) {
        h2.emit('connection', replaying(socket, head));
      } else {
        socket.unshift(head);
        h1.emit('connection', socket);
      }
    });
    socket.once('close', () => detecting.delete(socket));
  });
  // An http.Server starts tracking its connections (for request and header timeouts, and for
  // closeIdleConnections at shutdown) when it emits 'listening'. This one never listens itself,
  // so it is told when the real listener is up.
  server.on('listening', () => h1.emit('listening'));

  return {
    server,
    close: () =>
      new Promise<void>((resolve) => {
        let pending = 3;
        const done = () => {
          pending -= 1;
          if (pending === 0) resolve();
        };
        server.close(done);
        // A connection that has not said what it speaks has no request in flight.
        for (const socket of detecting) socket.destroy();
        h1.close(done);
        h1.closeIdleConnections();
        // GOAWAY lets streams in flight finish; the h2 server closes when its sessions have.
        for (const session of sessions) session.close();
        h2.close(done);
      }),
  };
}

/**
 * Reads until the first bytes decide the protocol, then hands them over with the socket. The
 * decision has a deadline from accept: a peer that sends nothing, or a preface a byte at a time,
 * is dropped when it passes.
 */
function peek(socket: Socket, deadlineMs: number, route: (isHttp2: boolean, head: Buffer) => void): void {
  let seen = Buffer.alloc(0);
  const deadline = setTimeout(() => socket.destroy(), deadlineMs);
  const onData = (chunk: Buffer) => {
    seen = Buffer.concat([seen, chunk]);
    const length = Math.min(seen.length, PREFACE.length);
    const isPrefix = seen.subarray(0, length).equals(PREFACE.subarray(0, length));
    if (isPrefix && seen.length < PREFACE.length) return;
    clearTimeout(deadline);
    socket.off('data', onData);
    socket.off('error', onError);
    socket.off('close', onClose);
    socket.pause();
    route(isPrefix, seen);
    socket.resume();
  };
  const onError = () => socket.destroy();
  const onClose = () => clearTimeout(deadline);
  socket.on('data', onData);
  socket.on('error', onError);
  socket.on('close', onClose);
  socket.resume();
}

/**
 * The HTTP/2 deadlines Node does not keep itself. A session with no open stream is closed with
 * GOAWAY after the idle timeout. PINGs and SETTINGS do not count as activity: gRPC clients send
 * keepalive PINGs precisely to keep connections they are not using alive, and gRPC's own
 * MAX_CONNECTION_IDLE ignores them for the same reason; a client that wants the connection
 * again reconnects, as it must after any GOAWAY. A stream whose request has not fully arrived
 * within the request timeout is reset with CANCEL, as HTTP/1.1 answers 408 for the same case.
 */
function superviseSession(session: ServerHttp2Session, limits: ConnectionLimits): void {
  let open = 0;
  let idle: NodeJS.Timeout | undefined;
  const startIdle = () => {
    idle = setTimeout(() => session.close(), limits.http2IdleTimeoutMs);
  };
  startIdle();
  session.on('stream', (stream) => {
    open += 1;
    clearTimeout(idle);
    const requestDeadline = setTimeout(() => {
      // remoteClose: the client has sent END_STREAM, whether or not the handler has read it all.
      if (!stream.closed && !stream.destroyed && stream.state.remoteClose !== 1) stream.close(http2Constants.NGHTTP2_CANCEL);
    }, limits.requestTimeoutMs);
    stream.once('close', () => {
      clearTimeout(requestDeadline);
      open -= 1;
      if (open === 0 && !session.closed && !session.destroyed) startIdle();
    });
  });
  session.once('close', () => clearTimeout(idle));
}

/**
 * The peer address of a request's socket. Over prior-knowledge HTTP/2 the socket Node exposes
 * wraps the replaying stream below and knows no address itself; the stream does.
 */
export function remoteAddressOf(socket: unknown): string | undefined {
  const direct = (socket as { remoteAddress?: string } | undefined)?.remoteAddress;
  if (direct !== undefined) return direct;
  return (socket as { stream?: { remoteAddress?: string } } | undefined)?.stream?.remoteAddress;
}

/**
 * The socket as a stream that first replays `head`. Node's HTTP/2 server reads a TCP socket's
 * native handle directly, so bytes already read and unshifted would never reach it; given a plain
 * Duplex it reads through JavaScript instead and sees them.
 */
function replaying(socket: Socket, head: Buffer): Duplex {
  const stream = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      // The session has ended the connection (GOAWAY sent); a peer that never closes its side
      // would otherwise hold the socket half-open forever.
      setTimeout(() => socket.destroy(), LINGER_MS).unref();
      socket.end(callback);
    },
    destroy(error, callback) {
      socket.destroy(error ?? undefined);
      callback(error);
    },
  });
  stream.push(head);
  socket.on('data', (chunk: Buffer) => {
    if (!stream.push(chunk)) socket.pause();
  });
  socket.on('end', () => stream.push(null));
  socket.on('error', (error) => stream.destroy(error));
  socket.on('close', () => stream.destroy());
  // Handlers read the peer's address from the request's socket.
  Object.defineProperties(stream, {
    remoteAddress: { get: () => socket.remoteAddress },
    remotePort: { get: () => socket.remotePort },
    remoteFamily: { get: () => socket.remoteFamily },
    localAddress: { get: () => socket.localAddress },
    localPort: { get: () => socket.localPort },
  });
  return stream;
}
