// The last answer of an HTTP/1.1 connection whose request body was not read: REST's refusals of a
// body too large, and RPC's answers made before a body ended (its deadline, a declared length
// over the limit).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { placesPerAddress } from '../infrastructure/client-address.ts';

/**
 * Marks the answer to a request refused before its body was read as the connection's last, and
 * lets the connection linger, unread, for LINGER_MS after everything written on it has left for
 * the kernel. Node ends such a connection at once (destroySoon): with the client's bytes unread,
 * the kernel answers them with a reset that can overtake the answer, and the client read none of
 * it (seen with a gzip body sent chunked). The wait counts from the last write leaving, and is
 * long enough for a slow reader to take what the kernel still holds: answers pipelined ahead of
 * the refused request were thrown away by the reset when it came a second after the end was
 * asked for (helper 176). Nothing is read meanwhile: Node resumes a request whose body nobody
 * read (its dump) as it ends the answer, which took a declared 1 GB body at line rate, 73 MB in
 * the second (helper 176); it is paused again here. A connection whose writes never leave (a
 * client that stops reading) is destroyed after FLUSH_MAX_MS.
 */
export function closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  const { socket } = req;
  socket.destroySoon = () => {
    // Node's dump of an unread body resumes the request on the next tick, and drops what it reads
    // without ever pausing the socket: the socket is paused once that has run.
    req.pause();
    setImmediate(() => socket.pause());
    // At most LINGERING_MAX at once, process-wide: each counts against its address's
    // CONNECTIONS_PER_ADDRESS_MAX while it lingers, and a client refused 264 times in a few seconds
    // (a test of the metrics' labels) found its address's 128 taken. And at most
    // 8 of them from one address (IPv6: one /64): a refusal of a declared
    // length over the limit costs nothing and is charged to no rate limit, so one address opening
    // 13 such connections a second held all 64 places, and other clients' refusals went back to
    // the reset race (helper 215: 3-7 of 30 lost their 413). Past either bound the answer is left
    // to the race a plain close makes.
    const release = lingering < LINGERING_MAX ? lingeringFrom.take(socket.remoteAddress) : undefined;
    if (release === undefined) {
      socket.end();
      socket.once('finish', () => socket.destroy());
      return;
    }
    lingering += 1;
    (socket as Socket & { [LINGERING]?: boolean })[LINGERING] = true;
    socket.once('close', () => {
      lingering -= 1;
      release();
    });
    const cap = setTimeout(() => socket.destroy(), FLUSH_MAX_MS).unref();
    socket.once('finish', () => {
      clearTimeout(cap);
      setTimeout(() => socket.destroy(), LINGER_MS).unref();
    });
    socket.end();
  };
  res.setHeader('connection', 'close');
}

/** Connections lingering after a refusal now (see closeAfterAnswer), and the most at once. */
let lingering = 0;
const LINGERING_MAX = 64;
/** Connections lingering now by client address, at most 8 from one at once. */
const lingeringFrom = placesPerAddress(8);

/**
 * How long a connection refused mid-body stays open, unread, after its answers have left for the
 * kernel: what the kernel still holds (a few MB on loopback) takes a client reading at 1 MB/s
 * a few seconds. The connection counts against CONNECTIONS_PER_ADDRESS_MAX meanwhile.
 */
const LINGER_MS = 5_000;
/** How long the answers ahead of such a refusal may take to leave before the connection is destroyed. */
const FLUSH_MAX_MS = 30_000;

const LINGERING = Symbol('lingering after an answer');

/**
 * Whether `socket` lingers after its last answer (closeAfterAnswer) and that answer has left for
 * the kernel: a draining server ends such a connection instead of waiting LINGER_MS out, as it
 * could not see its client go (the socket is paused). Such a wait held the close of a server
 * whose RPC clients had gone past its bound.
 */
export function lingersAnswered(socket: Socket): boolean {
  return (socket as Socket & { [LINGERING]?: boolean })[LINGERING] === true && socket.writableFinished;
}
