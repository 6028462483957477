// The processes behind one layer URL, each called in turn. A URL names a host; behind a
// Kubernetes Service, or a Compose service scaled past one container, the host stands for several
// processes. A client that connected by name went through the platform's connection-level balancing
// (kube-proxy picks a pod per TCP connection) once, and then sent every call on that one HTTP/2
// connection: a controller used one replica of the layer below for its whole life, and replicas
// added later got nothing until a restart (helper 128). So the name is resolved to all of its
// addresses (a headless Service, `clusterIP: None`, answers with every ready pod), a connection
// is kept to each, and calls go round-robin across them, as gRPC's own `dns:///` resolver with the
// `round_robin` policy does. The name is resolved again at most every RESOLVE_INTERVAL_MS, when a
// call comes; an address that could not be reached is passed over for as long. A URL whose host
// is an address is that one process, as before.
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** How long a resolution stands before a call has the name resolved again (in the background). */
export const RESOLVE_INTERVAL_MS = 10_000;

/** How long a resolution may take before it counts as failed (the last addresses are kept). */
const RESOLVE_TIMEOUT_MS = 5_000;

/** How long the first calls wait for the first resolution before they go by name. */
const FIRST_WAIT_MS = 1_000;

/** The least time between two resolutions that calls failing to connect ask for. */
const MIN_RESOLVE_GAP_MS = 1_000;

/** What is kept per address: a client that can be closed once its address is gone. */
export interface Endpoint {
  /** Ends the connection once the calls on it have finished. */
  drain(): void;
  /** `ready`: connected; `connecting`: a connection is being made; `idle`: none is. */
  state?(): 'idle' | 'connecting' | 'ready';
  /** Starts making the connection without a call. */
  connect?(): void;
}

/** Every address of `host`, in the resolver's order; rejects when the name does not resolve. */
export type Resolve = (host: string) => Promise<string[]>;

const resolveAll: Resolve = async (host) => (await lookup(host, { all: true, order: 'verbatim' })).map((entry) => entry.address);

export class ResolvedEndpoints<E extends Endpoint> {
  readonly #host: string;
  readonly #make: (address: string | undefined) => E;
  readonly #resolve: Resolve | undefined;
  readonly #now: () => number;
  /** By address; `undefined` is the connection by name, used until the first resolution. */
  #endpoints = new Map<string | undefined, E>();
  #order: E[];
  /** Until when each address that could not be reached is passed over. */
  #down = new Map<E, number>();
  #next = 0;
  #resolvedAt = Number.NEGATIVE_INFINITY;
  #resolving: Promise<void> | undefined;
  #first: Promise<void> | undefined;

  /**
   * `make(address)` builds the client of one address (`undefined`: connect by name). `resolve`
   * defaults to the system's resolver; none is made for a host that is an address.
   */
  constructor(host: string, make: (address: string | undefined) => E, options: { resolve?: Resolve; now?: () => number } = {}) {
    this.#host = host.replace(/^\[(.*)\]$/, '$1');
    this.#make = make;
    this.#now = options.now ?? Date.now;
    this.#resolve = isIP(this.#host) === 0 ? (options.resolve ?? resolveAll) : undefined;
    const byName = make(undefined);
    this.#endpoints.set(undefined, byName);
    this.#order = [byName];
    // Resolved at once, so that the first calls already go to every address; they wait for it
    // FIRST_WAIT_MS at most (a resolver that hangs must not hold calls to their deadlines), and
    // then go by name.
    this.refresh();
    if (this.#resolving !== undefined) {
      const first = Promise.race([this.#resolving, sleep(FIRST_WAIT_MS, undefined, { ref: false })]).then(() => {
        if (this.#first === first) this.#first = undefined;
      });
      this.#first = first;
    }
  }

  /**
   * The first resolution, while it is under way: calls wait for it rather than all go to the one
   * process a connection by name reaches. Undefined once it is done (or failed: then by name).
   */
  initial(): Promise<void> | undefined {
    return this.#first;
  }

  /** The client for the next call: the next live address in turn. */
  pick(): E {
    if (this.#resolve !== undefined && this.#now() - this.#resolvedAt >= RESOLVE_INTERVAL_MS) this.refresh();
    const count = this.#order.length;
    const now = this.#now();
    // The next address that is connected and not down, as gRPC's round_robin picks only connected
    // subchannels: a call put on a connection that was never made waited out its deadline (helper
    // 130). The others are connected meanwhile, without a call; when none is connected, the next
    // that is not down takes the call.
    let fallback: E | undefined;
    for (let tried = 0; tried < count; tried += 1) {
      const endpoint = this.#order[this.#next % count] as E;
      this.#next = (this.#next + 1) % count;
      if ((this.#down.get(endpoint) ?? 0) > now) continue;
      const state = endpoint.state?.() ?? 'ready';
      if (state === 'ready') return endpoint;
      if (state === 'idle' && count > 1) endpoint.connect?.();
      fallback ??= endpoint;
    }
    if (fallback !== undefined) return fallback;
    // Every address failed since the last resolution: try them anyway, in turn.
    const endpoint = this.#order[this.#next % count] as E;
    this.#next = (this.#next + 1) % count;
    return endpoint;
  }

  /**
   * The call on `endpoint` could not reach its process: it is passed over for RESOLVE_INTERVAL_MS,
   * and the name resolved again (at most once a second), in case its process has gone.
   */
  failed(endpoint: E): void {
    if (this.#resolve === undefined || !this.#order.includes(endpoint)) return;
    this.#down.set(endpoint, this.#now() + RESOLVE_INTERVAL_MS);
    if (this.#now() - this.#resolvedAt >= MIN_RESOLVE_GAP_MS) this.refresh();
  }

  /** Resolves the name again, in the background; one resolution at a time. */
  refresh(): void {
    if (this.#resolve === undefined || this.#resolving !== undefined) return;
    this.#resolvedAt = this.#now();
    // Bounded: a lookup that never settled left this set, and the name was never resolved again.
    const timedOut = sleep(RESOLVE_TIMEOUT_MS, undefined, { ref: false }).then(() => Promise.reject(new Error('the name did not resolve in time')));
    this.#resolving = Promise.race([this.#resolve(this.#host), timedOut])
      .then((addresses) => this.#use([...new Set(addresses)]))
      // A name that does not resolve now keeps the addresses it had.
      .catch(() => undefined)
      .finally(() => {
        this.#resolving = undefined;
      });
  }

  /** Settles once the resolution under way, if any, has been applied (for tests and start-up). */
  async settled(): Promise<void> {
    await this.#resolving;
  }

  /** Every client, for closing. */
  all(): E[] {
    return [...this.#endpoints.values()];
  }

  #use(addresses: string[]): void {
    if (addresses.length === 0) return;
    const endpoints = new Map<string | undefined, E>();
    for (const address of addresses) endpoints.set(address, this.#endpoints.get(address) ?? this.#make(address));
    for (const [address, endpoint] of this.#endpoints) if (!endpoints.has(address)) endpoint.drain();
    this.#endpoints = endpoints;
    this.#order = [...endpoints.values()];
    for (const endpoint of this.#down.keys()) if (!this.#order.includes(endpoint)) this.#down.delete(endpoint);
  }
}
