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
//   HTTP/1.1 pipelining             one answered at a time; 128 waiting; answers stalled for the request timeout
//   HTTP/2 session with no stream   idle timeout → GOAWAY; PINGs do not count as activity
//   HTTP/2 stream, request half     the same request timeout as HTTP/1.1 → RST_STREAM CANCEL
//   HTTP/2 streams per connection   SETTINGS_MAX_CONCURRENT_STREAMS
//   per client address              connections, and HTTP/2 streams across its connections
// A stream whose request has fully arrived is the application's business: a gRPC Watch may
// rightly stay open for hours (src/controllers/rpc/health-service.ts caps those).
import { Code, ConnectError } from '@connectrpc/connect';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import {
  constants as http2Constants,
  createServer as createHttp2Server,
  type Http2Session,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { loadConfig } from './config.ts';
import { IDEMPOTENCY_KEY_FIELD } from './domain/idempotency-key.ts';
import { errorEnvelope, type ErrorBody } from './controllers/rest/envelope.ts';
import { crossSiteProblem } from './controllers/cross-site.ts';
import { lingersAnswered } from './controllers/close-after-answer.ts';
import { framingBound } from './controllers/edge-input.ts';
import { addressKey, compileTrust, placesPerAddress, remoteAddressOf, type TrustProxySetting } from './infrastructure/client-address.ts';
import { rateLimitedWarning, type Logger } from './infrastructure/logger.ts';
import { requestIdFrom } from './infrastructure/request-id.ts';
import { rpcRefusal, type Refusal } from './rpc/refusal.ts';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** How long a peer gets to close its side after the server has ended an HTTP/2 connection. */
const LINGER_MS = 5_000;

/** At most one warning per this interval about refused connections (and one about streams). */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** The bounds on connections; src/config.ts documents each and holds the defaults. */
export interface ConnectionLimits {
  protocolDetectionTimeoutMs: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  http2IdleTimeoutMs: number;
  http2MaxConcurrentStreams: number;
  /** Open connections per client address; 0 for no cap. */
  connectionsPerAddress: number;
  /** Open HTTP/2 streams per client address, over all its connections; 0 for no cap. */
  http2StreamsPerAddress: number;
}

export interface DualProtocolServerOptions {
  /** Without them, the configuration's defaults. */
  limits?: ConnectionLimits | undefined;
  /** Peers trusted as proxies are exempt from the per-address caps. */
  trustProxy?: TrustProxySetting | undefined;
  /** Where refusals are reported (rate-limited). */
  logger?: Logger | undefined;
  /**
   * The largest body the application takes: a request that declares a larger one and asks
   * `Expect: 100-continue` is not invited to send it (the application refuses it unread).
   */
  bodyLimitBytes?: number | undefined;
  /**
   * Whether a request's Authorization vouches for it (an internal layer's: it presents the
   * deployment's INTERNAL_API_SECRET). Those that do not (probes, or anyone else on the network)
   * are at most UNVOUCHED_PER_ADDRESS_MAX open at once per address; the rest are refused at once.
   * Unset: no cap.
   */
  vouch?: ((authorization: string | undefined) => boolean) | undefined;
  /**
   * The origins whose pages may call the API from a browser (CORS_ORIGINS): a browser's request
   * made for a page of another site is refused before it is charged (see cross-site.ts). Unset:
   * no such check (an internal layer, which browsers do not reach).
   */
  browserOrigins?: readonly string[] | undefined;
  /**
   * How long a closing server leaves idle keep-alive connections, and connections that have not
   * yet said what they speak, for a last request (see close); DRAIN_IDLE_GRACE_MS when unset.
   */
  drainIdleGraceMs?: number | undefined;
}

/**
 * Requests open at once from one client address (IPv4, or IPv6 /64) that no internal secret
 * vouches for (see DualProtocolServerOptions.vouch). An internal layer takes every call of the
 * layers above on a connection or two, so it has no per-address caps; a probe needs one or two.
 * Without this, one client held 40 000 health checks open without their end (13 KB each, 744 MB
 * of RSS against a 512 Mi pod) until the request timeout (helper 150). Per address, so that such
 * a client cannot take the places of the orchestrator's probes either.
 */
export const UNVOUCHED_PER_ADDRESS_MAX = 32;

export interface DualProtocolServer {
  server: Server;
  /** Stops accepting, lets in-flight requests finish, then resolves. */
  close: () => Promise<void>;
  /**
   * Closes every connection still open, whatever it is doing (a stream whose client stopped
   * reading, say), so that a `close()` under way resolves; returns how many there were.
   */
  closeNow: () => number;
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
  const peers = createPeerTable(limits, trustedPeers(options.trustProxy ?? false));
  const warnConnection = rateLimitedWarning(options.logger, 'refused connections: too many open from one address', REFUSAL_LOG_INTERVAL_MS);
  const warnStream = rateLimitedWarning(options.logger, 'refused HTTP/2 streams: too many open from one address', REFUSAL_LOG_INTERVAL_MS);
  const warnMalformed = rateLimitedWarning(options.logger, 'refused requests: malformed or repeated headers', REFUSAL_LOG_INTERVAL_MS);
  const warnUnvouched = rateLimitedWarning(options.logger, 'refused requests: too many open without the internal secret', REFUSAL_LOG_INTERVAL_MS);
  const warnCrossSite = rateLimitedWarning(options.logger, 'refused requests: made by browsers for pages of sites CORS_ORIGINS does not name', REFUSAL_LOG_INTERVAL_MS);
  const browserOrigins = options.browserOrigins === undefined ? undefined : new Set(options.browserOrigins);
  /** Refuses a browser's cross-site request (see cross-site.ts); true when it did. */
  const refusedCrossSite = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse, address: string | undefined): boolean => {
    const problem = browserOrigins === undefined ? undefined : crossSiteProblem(req.method, req.url, req.headers, browserOrigins);
    if (problem === undefined) return false;
    warnCrossSite({ peer: addressKey(address) });
    refuseRequest(req, res, problem, REFUSED_CROSS_SITE);
    return true;
  };
  const warnResets = rateLimitedWarning(options.logger, 'refused connections: their address reset too many HTTP/2 streams before they started', REFUSAL_LOG_INTERVAL_MS);
  const unvouched = placesPerAddress(UNVOUCHED_PER_ADDRESS_MAX);
  /** Whether a request may go on; one no secret vouches for holds a place until `onDone` releases it. */
  const admitUnvouched = (address: string | undefined, vouched: boolean, onDone: (release: () => void) => void): boolean => {
    if (options.vouch === undefined || vouched) return true;
    const release = unvouched.take(address);
    if (release !== undefined) onDone(release);
    return release !== undefined;
  };

  const startInTurn = turnGate(REQUESTS_PER_TURN);
  /**
   * Once the server is closing, every HTTP/1.1 answer not yet begun says `close`: an answer that
   * kept the connection alive invited the client's next request onto a connection the drain then
   * closed as idle, and that request was lost to a reset, a registration or a refresh the client
   * could not tell done or not (helper 153). Go's Server.Shutdown does the same.
   */
  let draining = false;
  /** Ends a drain's idle grace now (see close); set while a grace runs. */
  let endGrace: (() => void) | undefined;
  const h1 = createHttpServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      // Node checks those two deadlines on this interval (30 s by default), so a request could
      // outlive its deadline by that much; a check of the requests still arriving is cheap.
      connectionsCheckingInterval: Math.max(25, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4))),
      // Checked by headerProblem, which answers in the API's envelope and refuses two.
      requireHostHeader: false,
    },
    // A request whose connection is gone by its turn is not started: no handler, rate-limit
    // charge or log for a client that left (its address is no longer known either).
    answerInTurn((req, res) => {
      const headersProblem = headerProblem(req);
      if (headersProblem !== undefined) {
        warnMalformed({ peer: addressKey(req.socket.remoteAddress), reason: headersProblem });
        refuseRequest(req, res, headersProblem);
        return;
      }
      if (refusedCrossSite(req, res, req.socket.remoteAddress)) return;
      if (!admitUnvouched(req.socket.remoteAddress, options.vouch?.(req.headers.authorization) === true, (release) => res.once('close', release))) {
        warnUnvouched({ peer: addressKey(req.socket.remoteAddress), limit: UNVOUCHED_PER_ADDRESS_MAX });
        refuseRequest(req, res, TOO_MANY_UNVOUCHED, REFUSED_BUSY);
        return;
      }
      // The connection ends with this answer when the request says `close` among other tokens
      // (llhttp lets an HTTP/1.0 `keep-alive, close` keep it open, where a proxy in front takes
      // `close`: RFC 9112 §9.3), or asks for an upgrade this server does not perform (Node then
      // dropped what the client had pipelined behind it, and the connection sat unanswered until
      // its keep-alive ran out): helper 115.
      if (req.headers.upgrade !== undefined || saysClose(req.headers.connection) || draining) res.shouldKeepAlive = false;
      if (options.bodyLimitBytes !== undefined) boundFraming(req, res, options.bodyLimitBytes);
      startInTurn(() => {
        if (req.socket.destroyed) return false;
        handlers.http1(req, res);
        return true;
      });
    }, limits.requestTimeoutMs),
  );
  h1.keepAliveTimeout = limits.keepAliveTimeoutMs;
  h1.on('clientError', answerClientError);
  // A CONNECT's socket is the listener's: Node has taken it out of its error handling, its
  // timeouts and closeAllConnections. Errors end it (a reset after a CONNECT was an uncaught
  // ECONNRESET that stopped the process: helper 146), the answers owed ahead of it get the
  // request timeout and no more, the client the keep-alive timeout to close its side once the
  // refusal is out, and closeNow ends it with the rest.
  const tunnels = new Set<Duplex>();
  h1.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    tunnels.add(socket);
    socket.on('error', () => socket.destroy());
    const guard = setTimeout(() => socket.destroy(), limits.requestTimeoutMs);
    socket.once('close', () => {
      clearTimeout(guard);
      tunnels.delete(socket);
    });
    void refuseTunnel(socket, limits.keepAliveTimeoutMs);
  });
  // Node answers `Expect: 100-continue` with 100 Continue before any handler runs: it invited a
  // 100 MB upload from anyone before the 413 (helper 97). Only a body the application may take is
  // asked for; the request goes on to the handlers either way, which refuse an oversized one.
  h1.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    const declared = Number(req.headers['content-length']);
    if (!(options.bodyLimitBytes !== undefined && declared > options.bodyLimitBytes)) res.writeContinue();
    h1.emit('request', req, res);
  });
  // Any other expectation: Node answered a bare 417 on a kept-alive connection and then read and
  // dropped the whole declared body, past BODY_LIMIT and every header check (helper 115). Refused
  // in the API's envelope, and the connection closed before the body is read.
  h1.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    warnMalformed({ peer: addressKey(req.socket.remoteAddress), reason: 'unsupported Expect' });
    // The target in origin form first, so that an RPC path in absolute form is refused in its
    // protocol, not in REST's envelope (helper 137).
    toOriginForm(req);
    refuseRequest(req, res, 'Expect may only be 100-continue');
  });

  // The header list's bound set explicitly: Node 24 enforces its 64 KB default only then. Unset,
  // a header of 4 KB put once into HPACK's table and referred to 120 times (a byte each) made
  // 480 KB of header pairs per stream, held until the request deadline: 176 KB sent from each of
  // three addresses took the monolith from 687 MB to 1.09 GB (helper 203).
  const h2 = createHttp2Server({ settings: { maxConcurrentStreams: limits.http2MaxConcurrentStreams, maxHeaderListSize: HTTP2_MAX_HEADER_LIST_BYTES } }, (req, res) => {
    // A stream that ended its request at once (END_STREAM on its HEADERS) is handed over only
    // after the whole read has been processed, so one its client reset in the same write arrives
    // here destroyed, no longer naming its session or address: it is counted on the session's.
    if (req.stream.destroyed) {
      earlyReset(sessionOfStream.get(req.stream), options.vouch?.(req.headers.authorization) === true);
      return;
    }
    // Refused before the application sees it, so a refused stream costs no handler state.
    const address = remoteAddressOf(req.socket);
    const peer = peers.admitStream(address);
    if (peer === REFUSED) {
      warnStream({ peer: addressKey(address), limit: limits.http2StreamsPerAddress });
      req.stream.close(http2Constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    openStreams.add(req.stream);
    req.stream.once('close', () => {
      peers.releaseStream(peer);
      openStreams.delete(req.stream);
    });
    const session = req.stream.session;
    const vouched = options.vouch?.(req.headers.authorization) === true;
    const sessionPeer = session === undefined ? undefined : sessionPeers.get(session);
    if (vouched && sessionPeer !== undefined) sessionPeer.vouched = true;
    if (!admitUnvouched(address, vouched, (release) => req.stream.once('close', release))) {
      warnUnvouched({ peer: addressKey(address), limit: UNVOUCHED_PER_ADDRESS_MAX });
      req.stream.close(http2Constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    const headersProblem = http2HeaderProblem(req);
    if (headersProblem !== undefined) {
      warnMalformed({ peer: addressKey(address), reason: headersProblem });
      refuseRequest(req, res, headersProblem);
      return;
    }
    if (refusedCrossSite(req, res, address)) return;
    // A stream reset before its turn (rapid reset: HEADERS then RST_STREAM, hundreds per write)
    // is not started: before, each ran a handler after its client had left, and once the
    // connection was gone too its rate-limit charge fell on the shared `unknown` address.
    startInTurn(() => {
      if (req.stream.destroyed) {
        // A destroyed stream no longer names its session: the one it had on arrival.
        earlyReset(session, vouched);
        return false;
      }
      handlers.http2(req, res);
      return true;
    });
  });
  /**
   * A stream its client reset before its turn came. Past the address's budget (RESET_BUDGET), its
   * connections are closed with ENHANCE_YOUR_CALM and new ones refused until the budget has grown
   * back. nghttp2 limits resets per connection only: a client rotating connections (900 resets on
   * each, under nghttp2's 1 000) cost the server ~28 µs of CPU per stream, and its 3 s of attack
   * kept /health unanswered for 9 s after it had gone (helper 156). The address is the session's,
   * taken when it began: a client that resets the TCP connection right after its burst left
   * streams naming no address (helper 159).
   *
   * Layer ports count only callers without the internal secret (a controller cancels internal
   * calls whose clients left), close only sessions on which no call presented it, and refuse no
   * connection: the secret is not known before a call, and a stranger sharing the controller's
   * address (a node's pod /64, a host's loopback) cut the internal link for 10 s (helper 159).
   */
  const earlyReset = (session: Http2Session | undefined, vouched: boolean) => {
    const peer = session === undefined ? undefined : sessionPeers.get(session);
    if (peer?.key === undefined || vouched) return;
    peer.resets += 1;
    const budget = peers.spendReset(peer.key);
    if (budget === 'left') return;
    // Only sessions that reset streams themselves: another connection of the same address that
    // reset none (a second channel of a client whose other one times calls out at 1 ms) serves
    // on; its new connections are refused, since which they will be is not known (helper 161).
    const calm = (spent: Http2Session) => {
      const spender = sessionPeers.get(spent);
      if (spent.destroyed || spender === undefined || spender.vouched || spender.resets === 0) return;
      // destroy(undefined, code) would send NO_ERROR: the error's default replaces undefined.
      spent.goaway(http2Constants.NGHTTP2_ENHANCE_YOUR_CALM);
      spent.destroy();
    };
    // A connection accepted before the budget ran out, but not yet a session when it did.
    if (session !== undefined) calm(session);
    if (budget !== 'ran out') return;
    warnResets({ peer: peer.key, burst: RESET_BUDGET.burst, perSecond: RESET_BUDGET.perSecond });
    for (const open of sessions) if (sessionPeers.get(open)?.key === peer.key) calm(open);
  };
  /** The HTTP/2 streams not yet closed, for the drain. */
  const openStreams = new Set<ServerHttp2Stream>();
  /**
   * At shutdown, a stream whose answer is complete while its client may still send (a
   * bidirectional stream that never half-closes) is closed with NO_ERROR (RFC 9113 §8.1): else it
   * would keep its session, and so the server, open until the shutdown timeout.
   */
  const closeAnswered = () => {
    for (const stream of openStreams) {
      if (!stream.writableFinished || stream.readableEnded) continue;
      // Closed with RST_STREAM yet never ended: see superviseSession's deadline check.
      if (stream.closed) stream.destroy();
      else stream.close(http2Constants.NGHTTP2_NO_ERROR);
    }
  };
  const sessions = new Set<ServerHttp2Session>();
  /** Each stream's session, for a stream destroyed before it reaches the handler (see there). */
  const sessionOfStream = new WeakMap<ServerHttp2Stream, ServerHttp2Session>();
  /**
   * Each session's key for counting early resets (its address's, taken when it began: see
   * earlyReset), whether a call on it presented the internal secret, and how many of its streams
   * were reset before they started.
   */
  const sessionPeers = new WeakMap<Http2Session, { key: string | undefined; vouched: boolean; resets: number }>();
  h2.on('session', (session) => {
    sessionPeers.set(session, { key: peers.resetKey(remoteAddressOf(session.socket)), vouched: false, resets: 0 });
    session.prependListener('stream', (stream: ServerHttp2Stream) => sessionOfStream.set(stream, session));
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    superviseSession(session, limits);
    // One that spoke up during the drain's grace (see close): GOAWAY at once, its streams not
    // taken are refused as never processed, which a client may retry elsewhere.
    if (draining) session.close();
  });

  const detecting = new Set<Socket>();
  const h1Connections = new Set<Socket>();
  /**
   * The sockets handed to the HTTP/2 server, until they close: a session destroyed at the cut
   * lets go of its socket, which then lingers (lingerAfterEnd) for a client that never closes its
   * side, and held the listening server's close past SHUTDOWN_TIMEOUT_MS (helper 196).
   */
  const h2Sockets = new Set<Socket>();
  // noDelay: RPCs are small writes answered at once; Nagle's algorithm would hold each back
  // for the peer's delayed ACK (tens of milliseconds). Node's HTTP/1.1 server sets it for its own
  // sockets, but the HTTP/2 path below is handed the raw socket.
  const server = createNetServer({ pauseOnConnect: true, noDelay: true }, (socket) => {
    // Not on a layer port: whether a connection's calls present the secret is not known yet.
    const resetsSpent = options.vouch === undefined && peers.resetsSpent(socket.remoteAddress);
    const peer = resetsSpent ? REFUSED : peers.admitConnection(socket.remoteAddress);
    if (peer === REFUSED) {
      if (resetsSpent) warnResets({ peer: addressKey(socket.remoteAddress), burst: RESET_BUDGET.burst, perSecond: RESET_BUDGET.perSecond });
      else warnConnection({ peer: addressKey(socket.remoteAddress), limit: limits.connectionsPerAddress });
      // A reset rather than a FIN: the refused peer gets its answer at once and this side keeps
      // no TIME_WAIT state for it.
      socket.resetAndDestroy();
      return;
    }
    socket.once('close', () => peers.releaseConnection(peer));
    detecting.add(socket);
    peek(socket, limits.protocolDetectionTimeoutMs, (isHttp2, head) => {
      detecting.delete(socket);
      if (isHttp2) {
        // Node's HTTP/2 session reads the socket's native handle, and first takes what is
        // already buffered in the socket (the bytes read here), so the socket is handed over
        // as it is: no JavaScript stream between nghttp2 and the connection.
        // The socket is left paused: the session's first read of the buffered bytes starts the
        // native reads, while resuming it here would let the JavaScript stream drain those bytes
        // into the void before the session looks.
        socket.unshift(head);
        lingerAfterEnd(socket);
        h2Sockets.add(socket);
        socket.once('close', () => h2Sockets.delete(socket));
        h2.emit('connection', socket);
      } else {
        socket.unshift(head);
        h1Connections.add(socket);
        socket.once('close', () => h1Connections.delete(socket));
        h1.emit('connection', socket);
        socket.resume();
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
        draining = true;
        // The answers under way: each connection's current one, as Node keeps it (a registry of
        // them, a Set and a listener per request, cost the monolith 8 % more CPU per request).
        for (const socket of h1Connections) {
          const answer = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
          if (answer != null && !answer.headersSent) answer.shouldKeepAlive = false;
        }
        let pending = 3;
        const done = () => {
          pending -= 1;
          if (pending === 0) resolve();
        };
        // The listening server closes once every connection has (h1 and h2 never listen: they
        // close at once). Until then, a keep-alive connection busy now (a health watch the drain
        // ends, say) is closed when it goes idle, which would otherwise wait for its keep-alive
        // timeout, and an HTTP/2 stream answered in full whose client may still send is closed.
        // A keep-alive connection idle now is left the grace (SHUTDOWN_IDLE_GRACE_MS) first: a client between
        // two requests sends its next one then, and it is answered, with `close`. Closed at once,
        // such a connection met that request with a reset (helper 153). So is one accepted that
        // has not yet said what it speaks: a busy process may not have read the request it
        // already carries (helper 183).
        const graceEnds = Date.now() + (h1Connections.size === 0 && detecting.size === 0 ? 0 : (options.drainIdleGraceMs ?? DRAIN_IDLE_GRACE_MS));
        const idle = setInterval(() => {
          if (Date.now() >= graceEnds) h1.closeIdleConnections();
          closeAnswered();
          for (const socket of h1Connections) if (lingersAnswered(socket)) socket.destroy();
        }, IDLE_CLOSE_INTERVAL_MS);
        server.close(() => {
          clearInterval(idle);
          done();
        });
        // Node's close() of an HTTP server closes its idle connections at once (and this one,
        // which never listens, does nothing else). A connection still silent then is closed too.
        // The grace ends early at the cut (closeNow): a grace longer than the shutdown's own
        // bound held the close until the process was forced out with exit 1 (helper 196).
        const graceTimer = setTimeout(() => endGrace?.(), Math.max(0, graceEnds - Date.now()));
        endGrace = () => {
          endGrace = undefined;
          clearTimeout(graceTimer);
          for (const socket of detecting) socket.destroy();
          h1.close(done);
        };
        // GOAWAY lets streams in flight finish; the h2 server closes when its sessions have.
        for (const session of sessions) closeSession(session);
        h2.close(done);
      }),
    closeNow: () => {
      const connections = detecting.size + sessions.size + h1Connections.size;
      for (const socket of detecting) socket.destroy();
      for (const session of sessions) session.destroy();
      for (const socket of h2Sockets) socket.destroy();
      for (const tunnel of tunnels) tunnel.destroy();
      h1.closeAllConnections();
      endGrace?.();
      return connections;
    },
  };
}

/** The largest header list a stream may carry, decoded (RFC 9113 §6.5.2, SETTINGS_MAX_HEADER_LIST_SIZE). */
const HTTP2_MAX_HEADER_LIST_BYTES = 64 * 1024;

/** How often a closing server looks for connections that have gone idle. */
const IDLE_CLOSE_INTERVAL_MS = 50;

/** How long a closing server leaves idle keep-alive connections for a last request (see close). */
const DRAIN_IDLE_GRACE_MS = 300;

/**
 * How many requests start in one turn of the event loop; the rest start in the next turn. See
 * turnGate.
 */
const REQUESTS_PER_TURN = 16;

/**
 * Starts at most `perTurn` of the tasks given to it in one turn of the event loop, and the rest,
 * in order, in the turns after. Node reads every connection that has bytes in one turn and hands
 * each request over at once, while what those requests send on (internal calls over HTTP/2,
 * Redis commands) is written once, at the end of the turn. With fifty clients the whole batch
 * therefore reached the layer below in one write after the controller had handled all of it, the
 * layer below worked through it while the controller waited, and answered it in one write: the
 * two processes took turns instead of overlapping (README, "Issue 11, seventh round"). Started
 * in groups, the first group's calls leave at the end of the first turn, and the layer below
 * works on them while this process handles the next group. Exported for its test.
 *
 * A task returns `false` when it started nothing because its client had gone; it does not count
 * towards the turn's share. The queue is walked once, from its head: rapid reset on connection
 * after connection (HEADERS then RST_STREAM, 900 per connection, under nghttp2's per-connection
 * budget) queued hundreds of thousands of dead streams, each of which took one of a turn's 16
 * places, and every turn copied the whole backlog. One client's few seconds of it kept the
 * process from answering anyone, /health included, for minutes, at 3 GB of RSS (helper 156).
 */
export function turnGate(perTurn: number): (task: () => unknown) => void {
  let started = 0;
  let scheduled = false;
  let waiting: ((() => unknown) | undefined)[] = [];
  let head = 0;
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(nextTurn);
  };
  /** Runs a task; whether it counts as started. */
  const run = (task: () => unknown): boolean => {
    try {
      return task() !== false;
    } catch (error) {
      // As it would have been thrown from the request event, but after the tasks due with it start.
      queueMicrotask(() => {
        throw error;
      });
      return true;
    }
  };
  const nextTurn = () => {
    scheduled = false;
    started = 0;
    while (head < waiting.length && started < perTurn) {
      const task = waiting[head];
      waiting[head] = undefined;
      head += 1;
      if (task !== undefined && run(task)) started += 1;
    }
    if (head === waiting.length) {
      waiting = [];
      head = 0;
    } else {
      // The part already started is let go once it is most of the array.
      if (head >= 1024 && head * 2 >= waiting.length) {
        waiting = waiting.slice(head);
        head = 0;
      }
      schedule();
    }
  };
  return (task: () => unknown) => {
    schedule();
    // Behind any still waiting, so that arrival order holds.
    if (started >= perTurn || head < waiting.length) {
      waiting.push(task);
      return;
    }
    if (run(task)) started += 1;
  };
}

/**
 * HTTP/1.1 requests one connection may have waiting behind the one being answered. Past
 * PIPELINE_MAX_WAITING the connection is closed; from PIPELINE_STALL_WAITING on, its answers must
 * keep going out. Browsers do not pipeline, and clients that do keep a few requests ahead; a
 * client must be ready to send again what a closed connection left unanswered (RFC 9112, 9.3.2).
 */
const PIPELINE_STALL_WAITING = 16;
const PIPELINE_MAX_WAITING = 128;

/**
 * Answers a connection's pipelined requests one at a time, in order. Node hands the application
 * every request it reads at once and queues each answer behind the previous ones; an answer still
 * queued when its connection closed was never released, with the file it was sending or the
 * compressor it was writing through (an attacker leaked 20,000 descriptors or gigabytes that way),
 * and a client that pipelined without reading made the process hold every request it sent until
 * V8 ran out of heap. Here a request waits, unhandled, until the one before it is answered (or
 * its connection closes, when the waiting ones are dropped); more than PIPELINE_MAX_WAITING
 * waiting close the connection, and so does PIPELINE_STALL_WAITING or more waiting while no
 * answer goes out for `stallMs` (its peer reads nothing).
 */
function answerInTurn(handle: (req: IncomingMessage, res: ServerResponse) => void, stallMs: number): (req: IncomingMessage, res: ServerResponse) => void {
  interface Pipeline {
    busy: boolean;
    waiting: [IncomingMessage, ServerResponse][];
    /** Armed while PIPELINE_STALL_WAITING or more wait; re-armed by each answer. */
    stall: NodeJS.Timeout | undefined;
  }
  const pipelines = new WeakMap<Socket, Pipeline>();
  const pipelineOf = (socket: Socket): Pipeline => {
    let pipeline = pipelines.get(socket);
    if (pipeline === undefined) {
      const created: Pipeline = { busy: false, waiting: [], stall: undefined };
      socket.once('close', () => {
        clearTimeout(created.stall);
        created.waiting = [];
      });
      pipelines.set(socket, created);
      pipeline = created;
    }
    return pipeline;
  };
  const watch = (socket: Socket, pipeline: Pipeline) => {
    clearTimeout(pipeline.stall);
    pipeline.stall = pipeline.waiting.length >= PIPELINE_STALL_WAITING ? setTimeout(() => socket.destroy(), stallMs) : undefined;
  };
  const start = (socket: Socket, pipeline: Pipeline, req: IncomingMessage, res: ServerResponse) => {
    pipeline.busy = true;
    let answered = false;
    const onDone = () => {
      if (answered) return;
      answered = true;
      pipeline.busy = false;
      // An answer that closed the connection (`Connection: close`: the drain's, a refusal's) is
      // its last: Node ends the socket as that answer finishes, before this runs, and no answer
      // behind it would be written. The requests read behind it are not started (RFC 9112 §9.6):
      // started, a refresh rotated its token behind the client's back, and the client's retry of
      // the token it still held was taken for a replay, which ended the session (helper 184).
      if (socket.writableEnded) pipeline.waiting = [];
      const next = pipeline.waiting.shift();
      // An answer went out: the connection is moving.
      if (pipeline.stall !== undefined) watch(socket, pipeline);
      if (next !== undefined && !socket.destroyed) start(socket, pipeline, ...next);
    };
    res.once('finish', onDone);
    res.once('close', onDone);
    handle(req, res);
  };
  return (req, res) => {
    const socket = req.socket;
    if (socket.destroyed) return;
    const pipeline = pipelineOf(socket);
    if (!pipeline.busy) return start(socket, pipeline, req, res);
    if (pipeline.waiting.length >= PIPELINE_MAX_WAITING) {
      // The requests after this one, read in the same chunk, find the socket destroyed.
      socket.destroy();
      return;
    }
    pipeline.waiting.push([req, res]);
    if (pipeline.waiting.length === PIPELINE_STALL_WAITING) watch(socket, pipeline);
  };
}

/** What a request Node's HTTP/1.1 parser refuses is answered with, by the parser's error code. */
const CLIENT_ERRORS: Record<string, { status: number; reason: string; code: ErrorBody['error']['code']; message: string }> = {
  HPE_HEADER_OVERFLOW: {
    status: 431,
    reason: 'Request Header Fields Too Large',
    code: 'VALIDATION_ERROR',
    message: 'The request line and headers are too large (16 KiB at most)',
  },
  HPE_CHUNK_EXTENSIONS_OVERFLOW: { status: 413, reason: 'Payload Too Large', code: 'PAYLOAD_TOO_LARGE', message: 'The chunk extensions are too large' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, reason: 'Request Timeout', code: 'VALIDATION_ERROR', message: 'The request did not arrive in time' },
};
const MALFORMED = { status: 400, reason: 'Bad Request', code: 'VALIDATION_ERROR', message: 'Malformed HTTP request' } as const;

/**
 * A request the HTTP/1.1 parser refused (malformed, headers over the limit, too slow) never
 * reaches Express. Node's own answer is a bare status line; this one is the same status with the
 * API's error envelope, so every client sees one error format, and the connection is closed after
 * it. The refusal answers the request the parser was reading: one whose body broke off or came
 * too slowly, or one after the last answered. Nothing is written over an answer already under
 * way, nor while an earlier, complete request on the connection (pipelined in the same write)
 * awaits its answer: the client would read the refusal as that request's answer. It gets a
 * closed connection instead, on which a client retries what went unanswered.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean; req?: { complete?: boolean } } | null })._httpMessage;
  const refusedOwnRequest = inFlight == null || (inFlight.headersSent !== true && inFlight.req?.complete === false);
  // Bytes after a request that said `Connection: close`: that request is answered, and what
  // follows ignored (RFC 9112 §9.6); its answer, marked close, ends the connection. It used to be
  // destroyed with the answer unwritten (helper 115).
  if (error.code === 'HPE_CLOSED_CONNECTION' && !refusedOwnRequest) {
    socket.pause();
    return;
  }
  if (error.code !== 'ECONNRESET' && socket.writable && refusedOwnRequest) {
    socket.write(rawAnswer(CLIENT_ERRORS[error.code ?? ''] ?? MALFORMED));
  }
  socket.destroy();
}

/**
 * An error in the API's envelope as raw HTTP/1.1 bytes, for a socket no response object writes to
 * (Node's parser refused the request, or handed the socket over), ending the connection.
 */
function rawAnswer(answer: { status: number; reason: string; code: ErrorBody['error']['code']; message: string }, extraHeaders = ''): string {
  const requestId = requestIdFrom(undefined);
  const json = errorJson(answer, requestId);
  return (
    `HTTP/1.1 ${answer.status} ${answer.reason}\r\n` +
    'Content-Type: application/json; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(json)}\r\n` +
    extraHeaders +
    'Cache-Control: no-store\r\n' +
    'X-Content-Type-Options: nosniff\r\n' +
    `X-Request-Id: ${requestId}\r\n` +
    'Connection: close\r\n\r\n' +
    json
  );
}

/** An answer still owed on a connection: the response its socket is writing, as Node keeps it. */
interface Owed {
  writableFinished: boolean;
  once(event: 'finish' | 'close', listener: () => void): unknown;
}

const NO_TUNNELS = { status: 405, reason: 'Method Not Allowed', code: 'VALIDATION_ERROR', message: 'CONNECT is not supported: this server opens no tunnels' } as const;

/**
 * A CONNECT request. Node hands its socket to a 'connect' listener, and with none destroyed it at
 * once: no answer, and none to the requests pipelined ahead of it either, whose handlers then
 * found their client gone (a registration dropped unanswered; helper 145). The answers owed are
 * written first, in order (each pipelined response takes the socket when the one ahead of it
 * finishes), then a 405 in the error envelope, and the connection ends, at the latest
 * `lingerMs` after the refusal is written.
 */
async function refuseTunnel(socket: Duplex, lingerMs: number): Promise<void> {
  for (;;) {
    const owed = (socket as Duplex & { _httpMessage?: Owed | null })._httpMessage;
    if (owed == null || owed.writableFinished || socket.destroyed) break;
    await new Promise<void>((resolve) => {
      owed.once('finish', resolve);
      owed.once('close', resolve);
    });
    // The next pipelined response is given the socket by the server's own 'finish' listener.
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (socket.destroyed) return;
  socket.end(
    rawAnswer(NO_TUNNELS, 'Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS\r\n'),
    // Written out; the client may still be sending (closing at once could reset the connection
    // before it reads the refusal), but not for longer than a kept-alive connection may idle.
    () => setTimeout(() => socket.destroy(), lingerMs).unref(),
  );
}

/** How often a chunked body's bytes on the wire are looked at (see boundFraming). */
const FRAMING_CHECK_MS = 20;

/**
 * The bytes a chunked HTTP/1.1 body takes on the wire, its framing included, bounded at twice the
 * body limit and 64 KiB: the handlers count the body's own bytes, which a client pads without end
 * in the framing that the parser strips: chunk extensions (16 KiB a chunk, one byte of body
 * each; 1.6 GB read before a 413) or leading zeros in a chunk's size (no bound at all: 6.7 GB
 * read in 15 s and never answered; helper 180). Past the bound the connection is destroyed.
 * Looked at every FRAMING_CHECK_MS while the body arrives, since a size line that never ends
 * gives the handlers nothing to count; REST's own check (rest-app.ts) refuses such a body with
 * 413 as each piece arrives, where it can.
 */
function boundFraming(req: IncomingMessage, res: ServerResponse, limitBytes: number): void {
  if (req.headers['transfer-encoding'] === undefined) return;
  const { socket } = req;
  const bound = framingBound(limitBytes);
  const start = socket.bytesRead;
  const check = setInterval(() => {
    // An answer under way is the handler's refusal or its answer: its own close follows.
    if (res.headersSent) clearInterval(check);
    else if (socket.bytesRead - start > bound) {
      clearInterval(check);
      socket.destroy();
    }
  }, FRAMING_CHECK_MS);
  const stop = () => clearInterval(check);
  req.once('end', stop);
  req.once('close', stop);
  res.once('finish', stop);
  res.once('close', stop);
}

/** Whether a Connection header names `close` among its tokens (RFC 9110 §7.6.1). */
function saysClose(connection: string | undefined): boolean {
  return connection?.split(',').some((token) => token.trim().toLowerCase() === 'close') === true;
}

function errorJson(answer: { code: ErrorBody['error']['code']; message: string }, requestId: string): string {
  return JSON.stringify(errorEnvelope(requestId, answer.code, answer.message));
}

/**
 * Why an HTTP/1 request's headers are refused, or undefined: more than one Authorization (see
 * TWO_AUTHORIZATIONS), or a Host header that is not exactly one (RFC 9112 §3.2). Node's own check
 * answered a missing Host with a bare 400 and took the first of two, where a proxy in front may
 * have routed by the other. HTTP/1.0 may omit it.
 */
function headerProblem(req: IncomingMessage): string | undefined {
  let hosts = 0;
  let authorizations = 0;
  let contentTypes = 0;
  let idempotencyKeys = 0;
  const raw = req.rawHeaders;
  for (let index = 0; index < raw.length; index += 2) {
    const name = raw[index];
    if (name?.length === 4 && name.toLowerCase() === 'host') hosts += 1;
    else if (name?.length === 13 && name.toLowerCase() === 'authorization') authorizations += 1;
    else if (name?.length === 12 && name.toLowerCase() === 'content-type') contentTypes += 1;
    else if (name?.length === 15 && name.toLowerCase() === IDEMPOTENCY_KEY_FIELD) idempotencyKeys += 1;
  }
  if (authorizations > 1) return TWO_AUTHORIZATIONS;
  if (idempotencyKeys > 1) return TWO_IDEMPOTENCY_KEYS;
  // Node keeps the first and drops the rest, where a proxy or filter in front may keep the last:
  // `application/json` then `text/plain` was parsed as JSON here and passed on there as text it
  // had no reason to inspect (helper 145).
  if (contentTypes > 1) return 'A request must carry one Content-Type header, not several';
  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing, and only a
  // final `chunked` frames a request. Node read `identity, chunked`, and a chunked HTTP/1.0 body
  // on a connection it kept open (helper 97): framing a proxy in front may read otherwise.
  const transferEncoding = req.headers['transfer-encoding'];
  if (transferEncoding !== undefined) {
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) return 'An HTTP/1.0 request cannot carry Transfer-Encoding';
    if (transferEncoding.trim().toLowerCase() !== 'chunked') return 'Transfer-Encoding must be chunked, alone';
  }
  // Only HTTP/1.0 may omit Host: Node's parser also takes `HTTP/2.0` and `HTTP/0.9` request lines
  // here (a real HTTP/2 request never reaches this server), which must not be a way around the rule.
  const http10 = req.httpVersionMajor === 1 && req.httpVersionMinor === 0;
  if (hosts > 1) return `An HTTP/1.${http10 ? 0 : 1} request must carry one Host header, not several`;
  if (hosts === 0 && !http10) return 'An HTTP/1.1 request must carry a Host header';
  // One HTTP/1.0 may omit is held to the same grammar when it is there (helper 137: a malformed
  // one reached connect-node, which could not form the URL: a bare 400 no RPC client reads).
  if (hosts === 1 && malformedAuthority(req.headers.host)) return 'The Host header is not a host name or address, with an optional port';
  return toOriginForm(req);
}

/** `http://authority/path?query` (or https): the absolute form of a request target. */
const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)([^#]*)$/i;

/**
 * Serves a request whose target is in absolute form (`GET http://host/api/v1/users/1`) as its
 * origin form, which RFC 9112 §3.2.2 requires of a server ("MUST accept the absolute-form"): it
 * was a 404 on every path. The target's authority stands for the Host header, which the server
 * then ignores (the same section); it must be well formed as Host must. The path is kept as the
 * client wrote it, not normalized by a URL parser (`..` segments and percent-encodings reach the
 * routes as they would in origin form). An authority-form target other than CONNECT's, or any
 * other that is no path, `*` or absolute URL, is left to the routes (a 404).
 */
function toOriginForm(req: IncomingMessage): string | undefined {
  const target = req.url ?? '';
  if (target.startsWith('/')) return undefined;
  const absolute = ABSOLUTE_FORM.exec(target);
  if (absolute === null) return undefined;
  const [, authority = '', rest = ''] = absolute;
  // The path first, so that a refusal of the authority is made in the protocol of the path (an
  // RPC's own shape, which a gRPC-Web or Connect client reads; helper 127).
  req.url = rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
  if (malformedAuthority(authority)) return 'The request target is not a URL with a host name or address, and an optional port';
  req.headers.host = authority;
  return undefined;
}

/**
 * The answer to a request with two Authorization headers. Node keeps the first (HTTP/1 and HTTP/2
 * alike) and drops the other unseen, where a proxy in front may have authorized the request by the
 * other (helper 76): the same disagreement as two Host headers or two JSON keys of one name.
 */
const TWO_AUTHORIZATIONS = 'A request must carry one Authorization header, not several';

/**
 * The answer to a request with two Idempotency-Key headers: Node joined them into one key, `a, b`,
 * which names neither the key the client meant nor the one a proxy in front may have kept.
 */
const TWO_IDEMPOTENCY_KEYS = 'A request must carry one Idempotency-Key header, not several';

/**
 * Why an HTTP/2 request's headers are refused, or undefined: more than one `authorization` (see
 * TWO_AUTHORIZATIONS), or an `:authority` and `host` that disagree (RFC 9113 §8.3.1).
 */
function http2HeaderProblem(req: Http2ServerRequest): string | undefined {
  const raw = req.rawHeaders;
  let authorizations = 0;
  let idempotencyKeys = 0;
  for (let index = 0; index < raw.length; index += 2) {
    if (raw[index] === 'authorization') authorizations += 1;
    else if (raw[index] === IDEMPOTENCY_KEY_FIELD) idempotencyKeys += 1;
  }
  if (authorizations > 1) return TWO_AUTHORIZATIONS;
  if (idempotencyKeys > 1) return TWO_IDEMPOTENCY_KEYS;
  const authority = req.headers[':authority'];
  const host = req.headers.host;
  if (authority !== undefined && host !== undefined && authority.toLowerCase() !== host.toLowerCase()) return 'The host header must be the same as :authority';
  return malformedAuthority(authority ?? host) ? 'The :authority is not a host name or address, with an optional port' : undefined;
}

/** RFC 3986's authority without userinfo (RFC 9110 §4.2.1): an IP literal or a reg-name, and a port. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::\d{0,5})?$/;

/**
 * Whether a Host or `:authority` value is not an authority a URL can be made of. connect-node
 * builds each request's URL from it, and answered one it could not (`[`, `[::1`) with a bare 400,
 * unlogged, that gRPC clients read as `internal` (helper 69); a Host Express would have taken
 * reaches the REST routes only as a well-formed one too.
 */
function malformedAuthority(value: string | undefined): boolean {
  // The URL parser decides what the grammar lets through (a port past 65535, `999.1.1.1`): a fast
  // path of names and addresses skipped it, and those still met connect-node's bare 400 (helper
  // 71). It costs ~0.2 µs.
  return value === undefined || !(AUTHORITY.test(value) && URL.canParse(`http://${value}/`));
}

/** Why a request is refused before any handler: its REST status and code, and its RPC code. */
interface RefusalKind {
  status: number;
  code: ErrorBody['error']['code'];
  rpcCode: Code;
  retryAfterSeconds?: number;
}

/** A request malformed at the HTTP level: 400, RPC `invalid_argument`. */
const REFUSED_MALFORMED: RefusalKind = { status: 400, code: MALFORMED.code, rpcCode: Code.InvalidArgument };

/** A browser's request for a page of another site (see cross-site.ts): 403, RPC `permission_denied`. */
const REFUSED_CROSS_SITE: RefusalKind = { status: 403, code: 'AUTHORIZATION_ERROR', rpcCode: Code.PermissionDenied };

/** A refusal for want of room (503 with Retry-After; RPC `unavailable`), not for what was sent. */
const REFUSED_BUSY: RefusalKind = { status: 503, code: 'SERVICE_UNAVAILABLE', rpcCode: Code.Unavailable, retryAfterSeconds: 1 };
const TOO_MANY_UNVOUCHED = 'Too many requests are open without the internal secret; retry shortly';

/**
 * A refusal in the API's envelope (400 unless `kind` says otherwise), or in an RPC's own protocol,
 * through the response (so after any pipelined answer before it); an HTTP/1.1 connection is
 * closed after it, an HTTP/2 one only loses the stream.
 */
function refuseRequest(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse, message: string, kind = REFUSED_MALFORMED): void {
  const requestId = requestIdFrom(undefined);
  const refusal = rpcRefusalOf(req, message, kind.rpcCode) ?? {
    status: kind.status,
    headers: { 'content-type': 'application/json; charset=utf-8' },
    body: Buffer.from(errorJson({ code: kind.code, message }, requestId)),
  };
  const headers: Record<string, string | number> = {
    ...refusal.headers,
    ...(kind.retryAfterSeconds === undefined ? {} : { 'retry-after': kind.retryAfterSeconds }),
    'content-length': refusal.body.byteLength,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'x-request-id': requestId,
  };
  if ('stream' in res) {
    if (refusal.body.byteLength === 0) {
      // gRPC's trailers-only answer: one HEADERS frame that ends the stream.
      res.stream.respond({ ':status': refusal.status, ...headers }, { endStream: true });
      return;
    }
    res.writeHead(refusal.status, headers);
  } else {
    res.shouldKeepAlive = false;
    res.writeHead(refusal.status, { ...headers, connection: 'close' });
  }
  res.end(refusal.body);
}

/** `/package.Service/Method`: the path of an RPC, as no REST route is. */
const RPC_PATH = /^\/[A-Za-z_][\w.]*\.[A-Za-z_]\w*\/[A-Za-z_]\w*(?:\?|$)/;

/**
 * The refusal of an RPC in its own protocol, or undefined for a request that is no RPC. A REST
 * envelope with HTTP 400 reads as `internal` to gRPC and Connect clients (helper 86: two
 * Authorization headers over gRPC, an :authority with a bad port), a server fault where the
 * client sent the mistake.
 */
function rpcRefusalOf(req: IncomingMessage | Http2ServerRequest, message: string, code: Code): Refusal | undefined {
  if (!RPC_PATH.test(req.url ?? '')) return undefined;
  return rpcRefusal(req.headers['content-type'] ?? '', new ConnectError(message, code));
}

/**
 * Reads until the first bytes decide the protocol, then hands them over with the paused socket. The
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
  };
  const onError = () => socket.destroy();
  const onClose = () => clearTimeout(deadline);
  socket.on('data', onData);
  socket.on('error', onError);
  socket.on('close', onClose);
  socket.resume();
}

/** Each supervised session's count of open streams (see superviseSession). */
const openStreamsOf = new WeakMap<ServerHttp2Session, () => number>();

/** How long a session told to close may stay open with no stream left before it is destroyed. */
const CLOSE_GRACE_MS = 1_000;

/**
 * Closes a session with GOAWAY, letting its streams finish, and destroys it if it is still there
 * CLOSE_GRACE_MS after its last stream has. Node closes such a session itself, except in one
 * state: a stream answered before its request body had arrived, whose client was held by flow
 * control with more to send, left the session no longer reading its socket (CLOSE-WAIT, the
 * client's GOAWAY unread), so it never closed: held for good in steady state (its idle close was
 * a GOAWAY too) and until the shutdown's cut at a shutdown, which a body of 70 KB over a health
 * check's 4 KiB, or of 200 KB over any call's limit, was enough to cause.
 */
function closeSession(session: ServerHttp2Session): void {
  session.close();
  const check = () => {
    if (session.destroyed) return;
    // Not while anything it wrote still waits to go out (a slow reader's last answer): destroyed,
    // the socket would drop it. The shutdown's cut bounds the wait.
    const sending = (session.state.outboundQueueSize ?? 0) > 0 || session.socket.writableLength > 0;
    if ((openStreamsOf.get(session)?.() ?? 0) === 0 && !sending) session.destroy();
    else setTimeout(check, CLOSE_GRACE_MS).unref();
  };
  setTimeout(check, CLOSE_GRACE_MS).unref();
}

/** Sweeps (request deadlines) an answer complete on this side may stay untaken on a moving connection. */
const UNTAKEN_MAX_SWEEPS = 5;

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
  openStreamsOf.set(session, () => open);
  const startIdle = () => {
    idle = setTimeout(() => closeSession(session), limits.http2IdleTimeoutMs);
  };
  startIdle();
  // Answers complete on this side that the client has not taken by their request deadline, and
  // answers still being written whose last write has not left (a streaming answer, whose
  // handler waits for its write to drain and so never ends it: helper 179 held 2 000 reflection
  // streams, 400 MB, for as long as it liked behind a zero window). At each sweep after that, if
  // nothing at all has gone out on the connection since the last sweep, they are cut: a client
  // advertising a zero window held such streams, and the answers they buffer, for as long as it
  // liked (HTTP/1.1's slow readers meet the socket's timeout). Node tells no stream's own progress
  // (a write completes when all of it has gone), so a client taking its answers slowly is known
  // by its connection moving. A connection kept moving by other means (PINGs, whose
  // acknowledgements are writes too) still loses an answer it has not taken after
  // UNTAKEN_MAX_SWEEPS sweeps. A streaming answer whose write has left by a sweep is moving: it
  // goes back to its own deadlines.
  const untaken = new Map<ServerHttp2Stream, { sweeps: number; moving: () => void }>();
  let sweep: NodeJS.Timeout | undefined;
  let sentAtLastSweep = -1;
  const sweepUntaken = () => {
    const sent = session.destroyed ? sentAtLastSweep : session.socket.bytesWritten;
    for (const [stream, held] of untaken) {
      if (!stream.writableEnded && stream.writableLength === 0) {
        untaken.delete(stream);
        held.moving();
      } else if (sent === sentAtLastSweep || held.sweeps + 1 >= UNTAKEN_MAX_SWEEPS) stream.close(http2Constants.NGHTTP2_CANCEL);
      else held.sweeps += 1;
    }
    sentAtLastSweep = sent;
    if (untaken.size === 0) {
      clearInterval(sweep);
      sweep = undefined;
    }
  };
  session.on('stream', (stream) => {
    open += 1;
    clearTimeout(idle);
    // At the request deadline, a request not fully arrived is cut (the client has not sent
    // END_STREAM, whether or not the handler has read it all); an answer complete on this side,
    // or one whose write has not left, is handed to the session's sweep (above); a stream still
    // answering (a health watch between messages, a handler at work) is left to its own
    // deadlines and looked at again at the next one.
    let deadline: NodeJS.Timeout | undefined;
    const check = () => {
      if (stream.destroyed) return;
      // Closed (RST_STREAM sent) but never ended: Node emits no 'close' for a stream answered
      // before its request body had arrived whose client was held by flow control with more to
      // send, so its session never closed either (held for good; at a shutdown, until the cut).
      if (stream.closed) {
        stream.destroy();
        return;
      }
      if (stream.state.remoteClose !== 1) {
        stream.close(http2Constants.NGHTTP2_CANCEL);
        // Looked at once more: reset, it may still never end (above).
        deadline = setTimeout(check, limits.requestTimeoutMs);
        return;
      }
      if (stream.writableEnded || stream.writableLength > 0) {
        untaken.set(stream, { sweeps: 0, moving: () => (deadline = setTimeout(check, limits.requestTimeoutMs)) });
        if (sweep === undefined) {
          sentAtLastSweep = session.socket.bytesWritten;
          sweep = setInterval(sweepUntaken, limits.requestTimeoutMs).unref();
        }
        return;
      }
      deadline = setTimeout(check, limits.requestTimeoutMs);
    };
    deadline = setTimeout(check, limits.requestTimeoutMs);
    stream.once('close', () => {
      clearTimeout(deadline);
      untaken.delete(stream);
      open -= 1;
      if (open === 0 && !session.closed && !session.destroyed) startIdle();
    });
  });
  session.once('close', () => {
    clearTimeout(idle);
    clearInterval(sweep);
  });
}

/**
 * Streams one address may reset before they start: a burst, refilled at a rate; an address that
 * spends it is refused for (penalty + 1) ÷ perSecond seconds (10 s). No client means to reset a
 * stream before the server has even begun it; nghttp2 allows 1 000 per connection, at 33 a second.
 */
const RESET_BUDGET = { burst: 1_000, perSecond: 100, penalty: 999, addresses: 10_000 };

/** What the peer table answers for a connection or stream over its address's cap. */
const REFUSED = Symbol('refused');

/** Per-address counts of open connections and HTTP/2 streams, for the per-address caps. */
function createPeerTable(limits: ConnectionLimits, isTrusted: (address: string) => boolean) {
  const counts = new Map<string, { connections: number; streams: number }>();
  /**
   * The key to count a peer under (its IPv4 address or IPv6 /64, as rate limits count clients),
   * or undefined when it is not counted: trusted, or no cap.
   */
  const keyOf = (address: string | undefined, cap: number): string | undefined => (address === undefined || cap === 0 || isTrusted(address) ? undefined : addressKey(address));
  const entry = (key: string) => {
    let found = counts.get(key);
    if (found === undefined) {
      found = { connections: 0, streams: 0 };
      counts.set(key, found);
    }
    return found;
  };
  const release = (key: string | undefined, field: 'connections' | 'streams') => {
    if (key === undefined) return;
    const found = counts.get(key);
    if (found === undefined) return;
    found[field] -= 1;
    if (found.connections <= 0 && found.streams <= 0) counts.delete(key);
  };
  const admit = (address: string | undefined, field: 'connections' | 'streams', cap: number): string | undefined | typeof REFUSED => {
    const key = keyOf(address, cap);
    if (key === undefined) return undefined;
    const found = entry(key);
    if (found[field] >= cap) return REFUSED;
    found[field] += 1;
    return key;
  };
  /** Each address's budget of streams reset before they started: a token bucket (RESET_BUDGET). */
  const resets = new Map<string, { tokens: number; at: number }>();
  const resetTokens = (key: string, now: number): { tokens: number; at: number } | undefined => {
    const found = resets.get(key);
    if (found === undefined) return undefined;
    found.tokens = Math.min(RESET_BUDGET.burst, found.tokens + ((now - found.at) / 1000) * RESET_BUDGET.perSecond);
    found.at = now;
    if (found.tokens >= RESET_BUDGET.burst) {
      resets.delete(key);
      return undefined;
    }
    return found;
  };
  /**
   * The key an address's early resets are counted under, or undefined for a trusted proxy. Not
   * only where streams are capped: a layer port counts its callers without the internal secret.
   */
  const resetKey = (address: string | undefined) => keyOf(address, 1);
  return {
    /** Takes one from `key`'s budget: whether some is left, it ran out with this one, or it had. */
    spendReset: (key: string): 'left' | 'ran out' | 'spent' => {
      const now = Date.now();
      let found = resetTokens(key, now);
      if (found === undefined) {
        // The table holds addresses that reset streams recently, and only so many of them.
        if (resets.size >= RESET_BUDGET.addresses) resets.delete(resets.keys().next().value as string);
        found = { tokens: RESET_BUDGET.burst, at: now };
        resets.set(key, found);
      }
      if (found.tokens < 1) return 'spent';
      found.tokens -= 1;
      if (found.tokens >= 1) return 'left';
      // Refused until it has grown back from here.
      found.tokens = -RESET_BUDGET.penalty;
      return 'ran out';
    },
    resetKey,
    /** Whether the address has spent its budget (its new connections are refused). */
    resetsSpent: (address: string | undefined): boolean => {
      if (resets.size === 0) return false;
      const key = resetKey(address);
      return key !== undefined && (resetTokens(key, Date.now())?.tokens ?? RESET_BUDGET.burst) < 1;
    },
    admitConnection: (address: string | undefined) => admit(address, 'connections', limits.connectionsPerAddress),
    releaseConnection: (key: string | undefined) => release(key, 'connections'),
    admitStream: (address: string | undefined) => admit(address, 'streams', limits.http2StreamsPerAddress),
    releaseStream: (key: string | undefined) => release(key, 'streams'),
  };
}

/**
 * Which socket peers are proxies, by Express's `trust proxy` rules applied to the first hop. With
 * `true` or a hop count of 1 or more every peer is by definition a proxy (the client's address is
 * taken from X-Forwarded-For for all of them), so no peer is capped per address: the proxy in
 * front is where per-client limits belong. With an address list only the listed peers are exempt,
 * and clients that reach the server directly are still capped.
 */
function trustedPeers(setting: TrustProxySetting): (address: string) => boolean {
  const trust = compileTrust(setting);
  return (address) => trust(address, 0);
}

/**
 * Once the HTTP/2 session has ended the connection (GOAWAY sent, our side closed), the peer gets
 * LINGER_MS to close its side; one that never does would otherwise hold the socket half-open
 * forever, since Node waits for the peer before destroying it.
 */
function lingerAfterEnd(socket: Socket): void {
  socket.once('finish', () => setTimeout(() => socket.destroy(), LINGER_MS).unref());
}
