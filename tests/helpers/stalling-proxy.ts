// A TCP proxy for fault tests: it forwards to a server (PostgreSQL, Redis) until told to stall,
// then holds every byte either side sends, as a frozen server or a network partition that keeps
// the connections open would. On resuming it delivers what it held; or, with `dropHeld`, it
// leaves the connections it held dead for good (their bytes lost, their sockets open), as a
// failover or a lost NAT entry does, while new connections work. Stalled as a partition, it also
// keeps a close to itself: the side that closed is gone, the other never hears of it.
import { connect, createServer, type Server, type Socket } from 'node:net';

interface Direction {
  to: Socket;
  chunks: Buffer[];
  dead: boolean;
  /** Bytes this direction holds on its own, the rest of the proxy forwarding (see loseAnswersAfter). */
  holding: boolean;
}

export class StallingProxy {
  readonly #server: Server;
  readonly #directions = new Map<Socket, Direction>();
  /** The connections of the proxy's clients (the application's pool). */
  readonly #clients = new Set<Socket>();
  #stalled = false;
  #partitioned = false;
  /** Texts a client's bytes must show, in order, before the answers to it are held; then done. */
  #answersLostAfter: string[] | undefined;
  /** Which loseAnswersAfter each connection's progress through its texts belongs to. */
  #lossGeneration = 0;
  #port = 0;

  /** A proxy listening on a loopback port in front of the server `url` names. */
  static async inFrontOf(url: string | URL, defaultPort: number): Promise<StallingProxy> {
    const target = new URL(url);
    const proxy = new StallingProxy({ host: target.hostname, port: Number(target.port || defaultPort) });
    await proxy.listen();
    return proxy;
  }

  constructor(target: { host: string; port: number }) {
    this.#server = createServer((client) => {
      const upstream = connect(target.port, target.host);
      this.#clients.add(client);
      client.once('close', () => this.#clients.delete(client));
      this.#forward(client, upstream, true);
      this.#forward(upstream, client, false);
      const close = (side: Socket, other: Socket) => () => {
        side.destroy();
        this.#directions.delete(side);
        const towards = this.#directions.get(other);
        if (this.#stalled && this.#partitioned && towards !== undefined) {
          // The other side stays open, and nothing it sends arrives anywhere.
          towards.dead = true;
          towards.chunks.length = 0;
          return;
        }
        other.destroy();
        this.#directions.delete(other);
      };
      client.on('close', close(client, upstream)).on('error', close(client, upstream));
      upstream.on('close', close(upstream, client)).on('error', close(upstream, client));
    });
  }

  #forward(from: Socket, to: Socket, fromClient: boolean): void {
    const direction: Direction = { to, chunks: [], dead: false, holding: false };
    this.#directions.set(from, direction);
    let awaited = 0;
    let generation = this.#lossGeneration;
    from.on('data', (chunk: Buffer) => {
      if (direction.dead) return;
      const texts = this.#answersLostAfter;
      // A client's bytes that show the texts in order: whatever answers them is held.
      if (texts !== undefined && fromClient) {
        if (generation !== this.#lossGeneration) {
          generation = this.#lossGeneration;
          awaited = 0;
        }
        while (awaited < texts.length && chunk.includes(texts[awaited] ?? '')) awaited += 1;
        if (awaited === texts.length) {
          this.#answersLostAfter = undefined;
          const answers = this.#directions.get(to);
          if (answers !== undefined) answers.holding = true;
        }
      }
      if (this.#stalled || direction.holding) direction.chunks.push(chunk);
      else to.write(chunk);
    });
  }

  /**
   * The next client connection whose statements show `texts` in order (each within one packet,
   * say a table's name and then COMMIT) gets no answer from then on: what it sent reaches the
   * server, what the server says is held, as when a reply is lost on the way. resume() ends it.
   */
  loseAnswersAfter(...texts: string[]): void {
    this.#answersLostAfter = texts;
    this.#lossGeneration += 1;
  }

  /** Listens on a free loopback port and returns it. */
  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    const address = this.#server.address();
    this.#port = typeof address === 'object' && address !== null ? address.port : 0;
    return this.#port;
  }

  /** `url` with this proxy's host and port: the server's own, reached through it. */
  via(url: string | URL): URL {
    const proxied = new URL(url);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(this.#port);
    return proxied;
  }

  /** Holds every byte; with `partition`, also every close (see the top of the file). */
  stall(options: { partition?: boolean } = {}): void {
    this.#stalled = true;
    this.#partitioned = options.partition === true;
  }

  /**
   * Forwards again: what was held is delivered, or with `dropHeld` every connection that held
   * something stays dead (nothing more passes either way) while new ones work.
   */
  resume(options: { dropHeld?: boolean } = {}): void {
    this.#stalled = false;
    this.#answersLostAfter = undefined;
    for (const direction of this.#directions.values()) {
      direction.holding = false;
      const chunks = direction.chunks.splice(0);
      if (options.dropHeld === true) {
        if (chunks.length > 0) direction.dead = true;
      } else {
        for (const chunk of chunks) direction.to.write(chunk);
      }
    }
  }

  /** How many client connections have statements held by a stall. */
  heldConnections(): number {
    let held = 0;
    for (const client of this.#clients) if ((this.#directions.get(client)?.chunks.length ?? 0) > 0) held += 1;
    return held;
  }

  /** Closes every connection at once, without a word to either side (a failover, a proxy restart). */
  cut(): void {
    for (const socket of this.#directions.keys()) socket.destroy();
  }

  async close(): Promise<void> {
    for (const socket of this.#directions.keys()) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
