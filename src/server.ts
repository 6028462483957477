// One TCP port for everything: REST and Connect/gRPC-Web over HTTP/1.1, and gRPC (or Connect)
// over cleartext HTTP/2 with prior knowledge. Each new connection is peeked at: the HTTP/2
// client preface starts with "PRI * HTTP/2.0", which no HTTP/1.x request line can.
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttp2Server, type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from 'node:http2';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export interface DualProtocolServer {
  server: Server;
  /** Stops accepting, lets in-flight requests finish, then resolves. */
  close(): Promise<void>;
}

/** Serves `http1` on HTTP/1.1 connections and `http2` on prior-knowledge HTTP/2 ones. */
export function createDualProtocolServer(handlers: {
  http1: (req: IncomingMessage, res: ServerResponse) => void;
  http2: (req: Http2ServerRequest, res: Http2ServerResponse) => void;
}): DualProtocolServer {
  const h1 = createHttpServer(handlers.http1);
  h1.keepAliveTimeout = 65_000;
  const h2 = createHttp2Server({}, handlers.http2);
  const sessions = new Set<Http2Session>();
  h2.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
  });

  // noDelay: RPCs are small writes answered at once; Nagle's algorithm would hold each back
  // for the peer's delayed ACK (tens of milliseconds). Node's HTTP/1.1 server sets it for its own
  // sockets, but the HTTP/2 path below is handed the raw socket.
  const server = createNetServer({ pauseOnConnect: true, noDelay: true }, (socket) => {
    peek(socket, (isHttp2, head) => {
      if (isHttp2) {
        h2.emit('connection', replaying(socket, head));
      } else {
        socket.unshift(head);
        h1.emit('connection', socket);
      }
    });
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
        h1.close(done);
        h1.closeIdleConnections();
        // GOAWAY lets streams in flight finish; the h2 server closes when its sessions have.
        for (const session of sessions) session.close();
        h2.close(done);
      }),
  };
}

/** Reads until the first bytes decide the protocol, then hands them over with the socket. */
function peek(socket: Socket, route: (isHttp2: boolean, head: Buffer) => void): void {
  let seen = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    seen = Buffer.concat([seen, chunk]);
    const length = Math.min(seen.length, PREFACE.length);
    const isPrefix = seen.subarray(0, length).equals(PREFACE.subarray(0, length));
    if (isPrefix && seen.length < PREFACE.length) return;
    socket.off('data', onData);
    socket.off('error', onError);
    socket.pause();
    route(isPrefix, seen);
    socket.resume();
  };
  const onError = () => socket.destroy();
  socket.on('data', onData);
  socket.on('error', onError);
  socket.resume();
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
