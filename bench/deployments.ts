// Bringing up each topology under test. The launcher in scripts/topology.ts (written separately)
// starts every topology; until it exists, the benchmark starts the monolith itself so that at
// least that topology can be measured.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { TopologyName } from './settings.ts';
import { startServerProcess } from './server-process.ts';

/** The parts of scripts/topology.ts the benchmark uses, mirrored so this compiles without it. */
interface LauncherModule {
  startTopology(options: { name: TopologyName; env: Record<string, string> }): Promise<{
    name: TopologyName;
    baseUrl: string;
    layers: { name: string; url: string; pid: number | undefined }[];
    stop(): Promise<void>;
  }>;
}

export interface Deployment {
  topology: TopologyName;
  /** Where clients connect: the controller, or the monolith. */
  baseUrl: string;
  /** One entry per process, e.g. repository, service, controller. */
  layers: { name: string; url: string; pid: number | undefined }[];
  stop(): Promise<void>;
}

export interface Deployer {
  /** 'scripts/topology.ts', or 'bench (monolith only)' while the launcher does not exist. */
  source: string;
  /** Why the topology cannot be started, or undefined when it can. */
  unavailable(topology: TopologyName): string | undefined;
  start(topology: TopologyName, env: Record<string, string>): Promise<Deployment>;
}

/** Uses scripts/topology.ts when present, otherwise starts the monolith directly. */
export async function createDeployer(root: string): Promise<Deployer> {
  const launcherPath = join(root, 'scripts', 'topology.ts');
  if (existsSync(launcherPath)) {
    const loaded: unknown = await import(pathToFileURL(launcherPath).href);
    if (typeof loaded !== 'object' || loaded === null || typeof (loaded as Partial<LauncherModule>).startTopology !== 'function') {
      throw new Error(`${launcherPath} does not export startTopology()`);
    }
    const launcher = loaded as LauncherModule;
    return {
      source: 'scripts/topology.ts',
      unavailable: () => undefined,
      async start(topology, env) {
        const running = await launcher.startTopology({ name: topology, env });
        return {
          topology,
          baseUrl: running.baseUrl,
          layers: running.layers.map((layer) => ({ name: layer.name, url: layer.url, pid: layer.pid })),
          stop: () => running.stop(),
        };
      },
    };
  }
  return {
    source: 'bench (monolith only: scripts/topology.ts not found)',
    unavailable: (topology) => (topology === 'monolithic' ? undefined : 'scripts/topology.ts not found'),
    async start(topology, env) {
      if (topology !== 'monolithic') throw new Error(`cannot start ${topology}: scripts/topology.ts not found`);
      const server = await startServerProcess({ name: 'monolith', script: join(root, 'src', 'main.ts'), cwd: root, env });
      return { topology, baseUrl: server.url, layers: [{ name: 'monolithic', url: server.url, pid: server.pid }], stop: () => server.stop() };
    },
  };
}
