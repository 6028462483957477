// Runs a deployment topology as real processes on this machine: `node src/main.js` once per
// layer, each configured only through its environment, exactly as the Docker Compose files and
// Kubernetes manifests configure them. Used by `npm run start:<topology>`, the process-level
// fault tests and the benchmark.
//
//   node scripts/topology.ts layered-grpc     # controller on PORT (3000), layers on the next ports (3001–3004)
//   METRICS_PORT=9464 node scripts/topology.ts layered-grpc   # metrics: repository 9464, service 9465, controller 9466
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { DEFAULT_PORTS, layersOf, SERVER_NODE_FLAGS, parseTopologyName, TOPOLOGY, TOPOLOGY_NAMES, type TopologyName, type UrlVariable } from '../src/topology.ts';

export type { TopologyName } from '../src/topology.ts';
export const TOPOLOGIES: readonly TopologyName[] = TOPOLOGY_NAMES;

/** One layer's process; it can be stopped and started again on the same port. */
export interface LayerProcess {
  /** The DEPLOYMENT_LAYER it runs. */
  name: string;
  /** Its base URL, e.g. http://127.0.0.1:3002. */
  url: string;
  pid: number | undefined;
  /** The last lines it wrote, for diagnostics. */
  output(): string;
  /** Sends `signal` (SIGTERM by default) and waits for the process to exit; resolves to its exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Starts it again with the same environment and waits until /health answers. */
  start(): Promise<void>;
}

export interface RunningTopology {
  name: TopologyName;
  /** The public API: the monolith or the controller layer. */
  baseUrl: string;
  /** Bottom layer first. */
  layers: LayerProcess[];
  /** Stops every process, the controller first. */
  stop: () => Promise<void>;
}

const ROOT = join(import.meta.dirname, '..');

export interface StartTopologyOptions {
  name: TopologyName;
  /** Environment of every process (DATABASE_URL goes to the process holding the database only). */
  env: Record<string, string | undefined>;
  /** Ports by layer name; free loopback ports when absent. */
  ports?: Record<string, number> | undefined;
  host?: string;
  /** Called with each line a process writes; by default output is only kept for `output()`. */
  onLine?: (layer: string, line: string) => void;
  /** Called with each layer as its process is about to start (before it is up). */
  onLayer?: (layer: LayerProcess) => void;
  /** Called when a layer's process exits once up, without stop() having asked it (a crash, a kill from outside). */
  onExit?: (layer: string, code: number | null, signal: NodeJS.Signals | null) => void;
  startTimeoutMs?: number;
  /**
   * Aborted when the caller is stopping the layers itself (the runner on a signal): a start that
   * then fails leaves them to it. Otherwise a failed start kills every layer it started, and a
   * layer draining gracefully at the caller's request was killed mid-drain (helper 196).
   */
  signal?: AbortSignal;
}

/** Starts the topology's processes bottom up and resolves when the public API answers /health. */
export async function startTopology(options: StartTopologyOptions): Promise<RunningTopology> {
  const host = options.host ?? '127.0.0.1';
  const { mode, protocol } = parseTopologyName(options.name);
  // Bottom up, as the table lists them: each layer's downstream is up before it starts.
  const layerNames = layersOf(mode);
  const ports: Record<string, number> = {};
  for (const layer of layerNames) ports[layer] = options.ports?.[layer] ?? (await freePort(host));
  // Every process serves its own metrics: with METRICS_PORT set, the layers get consecutive
  // ports from it (fixed ports), or free ones (free ports), never one port for all of them.
  const metricsBase = Number(options.env.METRICS_PORT ?? 0);
  const metricsPorts: Record<string, string> = {};
  if (metricsBase > 0) {
    for (const [index, layer] of layerNames.entries()) metricsPorts[layer] = String(options.ports === undefined ? await freePort(host) : metricsBase + index);
  }
  const url = (layer: string) => `http://${host}:${ports[layer]}`;
  const started: LayerProcess[] = [];
  try {
    for (const layer of layerNames) {
      // Stopped by the caller (the runner on a signal) while the last layer started: the caller
      // stops what it has, and a layer spawned now would be nobody's (helper 197).
      if (options.signal?.aborted === true) throw new Error(`stopped while starting, before ${layer}`);
      const spec = TOPOLOGY[mode][layer];
      if (spec === undefined) throw new Error(`${mode} has no ${layer} layer`);
      const holdsDatabase = spec.holds.repository;
      const downstream = Object.fromEntries(Object.entries(spec.calls).map(([variable, callee]) => [variable as UrlVariable, url(callee)]));
      const env: Record<string, string | undefined> = {
        ...options.env,
        ...(holdsDatabase ? {} : { DATABASE_URL: undefined }),
        DEPLOYMENT_MODE: mode,
        DEPLOYMENT_LAYER: layer,
        COMMUNICATION_PROTOCOL: protocol,
        ...downstream,
        HOST: host,
        PORT: String(ports[layer]),
        ...(metricsPorts[layer] === undefined ? {} : { METRICS_PORT: metricsPorts[layer] }),
      };
      const process = createLayerProcess(layer, url(layer), env, options.onLine, options.onExit, options.startTimeoutMs ?? 60_000);
      started.push(process);
      options.onLayer?.(process);
      await process.start();
    }
  } catch (error) {
    if (options.signal?.aborted !== true) await Promise.allSettled(started.map((layer) => layer.stop('SIGKILL')));
    throw error;
  }
  return {
    name: options.name,
    baseUrl: url(layerNames.at(-1) as string),
    layers: started,
    stop: async () => {
      for (const layer of [...started].reverse()) await layer.stop();
    },
  };
}

function createLayerProcess(
  name: string,
  url: string,
  env: Record<string, string | undefined>,
  onLine: ((layer: string, line: string) => void) | undefined,
  onExit: StartTopologyOptions['onExit'],
  startTimeoutMs: number,
): LayerProcess {
  let child: ChildProcess | undefined;
  /** Up (answered /health) and not asked to stop: an exit now is news. */
  let running = false;
  /** How often stop() was called: a start still checking its port then spawns nothing (helper 196). */
  let stops = 0;
  const lines: string[] = [];
  const keep = (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (line === '') continue;
      lines.push(line);
      if (lines.length > 200) lines.shift();
      onLine?.(name, line);
    }
  };
  const cleanEnv = Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));
  return {
    name,
    url,
    get pid() {
      return child?.pid;
    },
    output: () => lines.join('\n'),
    async start() {
      const stopsBefore = stops;
      // Another process on the port would answer /health for this one, which then dies of
      // EADDRINUSE unseen: the topology was reported up with none of its own processes (helper 88).
      await assertPortFree(url);
      // A stop while the port was checked: a process spawned now would be nobody's to stop.
      if (stops !== stopsBefore) throw new Error(`${name} was stopped while starting`);
      // A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground group) reaches the
      // runner only, which stops the layers top down. In the runner's group every layer got it at
      // once, the repository was gone first and requests in flight got 503s (helper 193).
      const spawned = spawn(process.execPath, [...SERVER_NODE_FLAGS, join(ROOT, 'src', 'main.js')], {
        cwd: ROOT,
        env: cleanEnv,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      child = spawned;
      spawned.once('exit', (code, signal) => {
        if (running) onExit?.(name, code, signal);
        running = false;
      });
      spawned.stdout.on('data', keep);
      spawned.stderr.on('data', keep);
      const deadline = Date.now() + startTimeoutMs;
      while (Date.now() < deadline) {
        if (spawned.exitCode !== null || spawned.signalCode !== null) {
          throw new Error(`${name} exited (${spawned.exitCode ?? spawned.signalCode}) while starting:\n${lines.join('\n')}`);
        }
        let up = false;
        try {
          up = (await fetch(`${url}/health`, { signal: AbortSignal.timeout(1_000) })).ok;
        } catch {
          // Not listening yet.
        }
        if (up) {
          // Stopped while it came up: its exit then is the stop's, not news.
          if (stops !== stopsBefore) throw new Error(`${name} was stopped while starting`);
          running = true;
          return;
        }
        await sleep(100);
      }
      spawned.kill('SIGKILL');
      throw new Error(`${name} did not answer /health within ${startTimeoutMs} ms:\n${lines.join('\n')}`);
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      running = false;
      stops += 1;
      const current = child;
      if (current?.exitCode !== null || current.signalCode !== null) return current?.exitCode ?? null;
      const exited = once(current, 'exit') as Promise<[number | null]>;
      current.kill(signal);
      const [code] = await exited;
      return code;
    },
  };
}

/** Throws unless nothing listens on `url`'s port (its host). */
async function assertPortFree(url: string): Promise<void> {
  const { hostname, port } = new URL(url);
  const refusal = await listenRefusal(hostname.replace(/^\[|\]$/g, ''), Number(port));
  if (refusal !== undefined) throw new Error(`port ${port} of ${hostname} is in use: ${refusal.message}`);
}

/**
 * Ports picked for the layers lie below Linux's ephemeral range (32768–60999), from which the OS
 * hands out every `listen(0)` and every outgoing connection's local port: a port the OS picked and
 * this released could be handed to another process (a test server, a client socket) before the
 * layer bound it, and the topology then talked to whatever held it (a CI run's layered-grpc suite
 * failed whole so, ECONNREFUSED on a port the readiness check had found answering).
 */
const PICKED_PORTS = { from: 20_000, to: 32_000 };

/**
 * A port nothing listens on right now, outside the ephemeral range (the OS picks one if none is
 * found). For any process started on a port picked before it binds: the layers here, and the
 * tests' own redis-server and layer processes.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = PICKED_PORTS.from + Math.floor(Math.random() * (PICKED_PORTS.to - PICKED_PORTS.from));
    if ((await listenRefusal(host, port)) === undefined) return port;
  }
  const server = createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  server.close();
  await once(server, 'close');
  return port;
}

/** Why this process could not listen on `port` of `host`, or undefined when it could (and then stopped). */
async function listenRefusal(host: string, port: number): Promise<Error | undefined> {
  const server = createServer();
  server.listen(port, host);
  const [outcome] = (await Promise.race([once(server, 'listening').then(() => ['free']), once(server, 'error')])) as [string | Error];
  if (outcome !== 'free') return outcome instanceof Error ? outcome : new Error(outcome);
  server.close();
  await once(server, 'close');
  return undefined;
}

// Run as a script: one topology in the foreground, every process's output prefixed by its layer.
if (import.meta.main) {
  const name = process.argv[2] as TopologyName | undefined;
  if (name === undefined || !TOPOLOGIES.includes(name)) {
    process.stderr.write(`usage: node scripts/topology.ts <${TOPOLOGIES.join('|')}>\n`);
    process.exit(2);
  }
  // The layers keep their places after the public port: PORT=4790 puts the service on 4791 and
  // the repository on 4792, where fixed ports had a second topology (or a tester told to keep
  // to its own range, helpers 76 and 77) collide with the first.
  const shift = Number(process.env.PORT ?? DEFAULT_PORTS.controller) - DEFAULT_PORTS.controller;
  // Every layer started so far, bottom first: each has a process group of its own, so a signal
  // to this one reaches none of them, also while the topology is still starting.
  const layers: LayerProcess[] = [];
  const stopping = new AbortController();
  // Controller first, as topology.stop(); the exit code is 0 only if every layer exited 0.
  const stop = (failed: 0 | 1 = 0) => {
    if (stopping.signal.aborted) return;
    stopping.abort();
    void (async () => {
      let code = failed;
      for (const layer of [...layers].reverse()) if ((await layer.stop()) !== 0) code = 1;
      process.exit(code);
    })();
  };
  process.on('SIGINT', () => stop());
  process.on('SIGTERM', () => stop());
  // A closed terminal or a dropped SSH session: the layers have process groups of their own, so
  // nothing else would stop them (helper 196).
  process.on('SIGHUP', () => stop());
  const topology = await startTopology({
    name,
    env: { ...process.env },
    host: process.env.HOST ?? '127.0.0.1',
    ports: Object.fromEntries(Object.entries(DEFAULT_PORTS).map(([layer, port]) => [layer, port + shift])),
    onLine: (layer, line) => process.stdout.write(`[${layer}] ${line}\n`),
    onLayer: (layer) => layers.push(layer),
    signal: stopping.signal,
    // A layer that dies leaves the others answering 503 for as long as they run: say so, and stop.
    onExit: (layer, code, signal) => {
      process.stderr.write(`[topology] ${layer} exited (${code ?? signal ?? '?'}) while the topology was up; stopping the others\n`);
      stop(1);
    },
  }).catch((error: unknown) => {
    // Stopped while starting: the layers it started are being stopped, and the process exits then.
    if (stopping.signal.aborted) return new Promise<never>(() => undefined);
    throw error;
  });
  process.stdout.write(`${name} is up: public API on ${topology.baseUrl}; Ctrl-C stops every process\n`);
}
