// The deployment topologies, in one table: which layers each DEPLOYMENT_MODE runs as processes,
// what each layer holds, whom it calls (and through which URL variable), and who holds the
// database. The configuration check (config.ts), the composition root (app.ts), the process
// runner (scripts/topology.ts), the tests and the deployment-files check read it from here.

export const DEPLOYMENT_MODES = ['monolithic', 'layered', 'microservices'] as const;
export type DeploymentMode = (typeof DEPLOYMENT_MODES)[number];

export const DEPLOYMENT_LAYERS = ['monolithic', 'controller', 'service', 'repository', 'auth-service', 'user-service'] as const;
export type DeploymentLayer = (typeof DEPLOYMENT_LAYERS)[number];

/**
 * The V8 heap settings every server process runs with: `npm start`, the Dockerfile's CMD and
 * scripts/topology.ts pass them on the command line (V8 sizes the young generation when the
 * isolate is created, so they cannot be set from inside the process), and the deployment-files
 * test checks that the three agree. On a machine with memory to spare V8 lets each semi-space of
 * the young generation grow to 64 MB; a 16 MB one holds the monolith ~100 MB lower (562 → 451 MB
 * RSS at the end of a bench run) at no throughput cost the bench could measure (README, "Issue 10,
 * fourth round"). Capping the old generation as well (`--max-old-space-size=384`) brought RSS
 * near the bare server's but cost 16-39 % more CPU per page, so the old generation is left to V8.
 */
export const SERVER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

/** The variables that list the base URLs of the processes a layer calls. */
export const URL_VARIABLES = ['SERVICE_URLS', 'AUTH_SERVICE_URLS', 'USER_SERVICE_URLS', 'REPOSITORY_URLS'] as const;
export type UrlVariable = (typeof URL_VARIABLES)[number];

/** What one layer's process holds itself; what it does not hold, it calls. */
export interface LayerHoldings {
  /** The public REST and RPC APIs. */
  controller: boolean;
  /** The auth use cases (register, login, sessions). */
  auth: boolean;
  /** The user and audit use cases. */
  users: boolean;
  /** The repositories, and so the database (DATABASE_URL) and the shared counters. */
  repository: boolean;
}

export interface LayerSpec {
  holds: LayerHoldings;
  /** The layers it calls, by the variable that lists their URLs. */
  calls: Partial<Record<UrlVariable, DeploymentLayer>>;
}

const holding = (...parts: (keyof LayerHoldings)[]): LayerHoldings => ({
  controller: parts.includes('controller'),
  auth: parts.includes('auth'),
  users: parts.includes('users'),
  repository: parts.includes('repository'),
});

/** Each mode's layers, bottom (the database's holder) first: the order to start them in. */
export const TOPOLOGY: Record<DeploymentMode, Partial<Record<DeploymentLayer, LayerSpec>>> = {
  monolithic: {
    monolithic: { holds: holding('controller', 'auth', 'users', 'repository'), calls: {} },
  },
  layered: {
    repository: { holds: holding('repository'), calls: {} },
    service: { holds: holding('auth', 'users'), calls: { REPOSITORY_URLS: 'repository' } },
    controller: { holds: holding('controller'), calls: { SERVICE_URLS: 'service' } },
  },
  microservices: {
    repository: { holds: holding('repository'), calls: {} },
    'auth-service': { holds: holding('auth'), calls: { REPOSITORY_URLS: 'repository' } },
    'user-service': { holds: holding('users'), calls: { REPOSITORY_URLS: 'repository' } },
    controller: { holds: holding('controller'), calls: { AUTH_SERVICE_URLS: 'auth-service', USER_SERVICE_URLS: 'user-service' } },
  },
};

/** The layers a mode runs, bottom first. */
export function layersOf(mode: DeploymentMode): DeploymentLayer[] {
  return Object.keys(TOPOLOGY[mode]) as DeploymentLayer[];
}

/** The spec of `layer` in `mode`, or undefined when the mode has no such layer. */
export function layerSpec(mode: DeploymentMode, layer: DeploymentLayer): LayerSpec | undefined {
  return TOPOLOGY[mode][layer];
}

/** What a layer holds, whatever the mode (a layer's holdings do not depend on it). */
export function holdingsOf(layer: DeploymentLayer): LayerHoldings {
  for (const mode of DEPLOYMENT_MODES) {
    const spec = TOPOLOGY[mode][layer];
    if (spec !== undefined) return spec.holds;
  }
  throw new Error(`no mode has a ${layer} layer`);
}

/** The port each layer listens on by convention (the compose files, the manifests, `npm run start:*`). */
export const DEFAULT_PORTS: Record<DeploymentLayer, number> = {
  monolithic: 3000,
  controller: 3000,
  service: 3001,
  repository: 3002,
  'auth-service': 3003,
  'user-service': 3004,
};

/** A topology as run and tested: a mode and the protocol between its layers. */
export const TOPOLOGY_NAMES = ['monolithic', 'layered-http', 'layered-grpc', 'microservices-http', 'microservices-grpc'] as const;
export type TopologyName = (typeof TOPOLOGY_NAMES)[number];

export function parseTopologyName(name: TopologyName): { mode: DeploymentMode; protocol: 'direct' | 'http' | 'grpc' } {
  if (name === 'monolithic') return { mode: 'monolithic', protocol: 'direct' };
  const [mode, protocol] = name.split('-') as ['layered' | 'microservices', 'http' | 'grpc'];
  return { mode, protocol };
}
