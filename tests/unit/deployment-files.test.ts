// The deployment files (docker/Dockerfile, docker-compose*.yml, k8s/) checked statically: no
// Docker engine or cluster is needed. Each process's environment is rebuilt the way Compose or
// Kubernetes would hand it over and given to loadConfig, and the ports, URLs, probes, Services
// and network policies are checked against each other and against the topologies the app knows.
import { load, loadAll } from 'js-yaml';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { basename, join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ENVIRONMENT_VARIABLES, loadConfig, type Environment } from '../../src/config.ts';
import {
  DEFAULT_PORTS,
  DEPLOYMENT_LAYERS,
  DEPLOYMENT_MODES,
  holdingsOf,
  layersOf,
  SERVER_NODE_FLAGS,
  TOPOLOGY,
  type DeploymentLayer,
  type DeploymentMode,
} from '../../src/topology.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const DOCKERFILE = 'docker/Dockerfile';

// The topologies as the app defines them (src/topology.ts): which processes each one runs, the
// port each listens on by convention, and which URL variables point at which layer.
type Mode = DeploymentMode;
type Layer = DeploymentLayer;

const LAYERS: Record<Mode, readonly Layer[]> = Object.fromEntries(DEPLOYMENT_MODES.map((mode) => [mode, layersOf(mode)])) as Record<Mode, Layer[]>;
const PORTS = DEFAULT_PORTS;
/** The layer each URL variable points at, wherever it is used. */
const URL_TARGETS: Record<string, Layer> = Object.fromEntries(DEPLOYMENT_MODES.flatMap((mode) => Object.values(TOPOLOGY[mode]).flatMap((spec) => Object.entries(spec.calls))));
const URLS_NEEDED: Record<Mode, Partial<Record<Layer, readonly string[]>>> = { monolithic: {}, layered: {}, microservices: {} };
for (const mode of DEPLOYMENT_MODES) {
  for (const layer of layersOf(mode)) {
    const urls = Object.keys(TOPOLOGY[mode][layer]?.calls ?? {});
    if (urls.length > 0) URLS_NEEDED[mode][layer] = urls;
  }
}
const SERVICE_TIER: readonly Layer[] = DEPLOYMENT_LAYERS.filter((layer) => !holdingsOf(layer).controller && (holdingsOf(layer).auth || holdingsOf(layer).users));
const EDGE: readonly Layer[] = DEPLOYMENT_LAYERS.filter((layer) => holdingsOf(layer).controller);
const HOLDS_DATABASE: readonly Layer[] = DEPLOYMENT_LAYERS.filter((layer) => holdingsOf(layer).repository);

/** Variables the database and cache containers read; the app never sees them. */
const INFRASTRUCTURE_VARIABLES = new Set(['POSTGRES_USER', 'POSTGRES_PASSWORD', 'POSTGRES_DB', 'MYSQL_USER', 'MYSQL_PASSWORD', 'MYSQL_DATABASE', 'MYSQL_ROOT_PASSWORD']);
/** What the operator supplies where the files demand a value (`${VAR:?…}`, secret placeholders). */
const TEST_VALUES: Record<string, string> = {
  JWT_SECRET: 'test-secret-q8Zr1uV6mWk3Tn0bYc5Hs2Lf7Gd4Xa9Pe1Jo6Ri3Uw8Ez5Ky2Nv0Mt7',
  INTERNAL_API_SECRET: 'test-internal-secret-Vb3Nm8Qa1Zx6Wc4Er9Ty2Ui7',
  POSTGRES_PASSWORD: 'test-password',
  MYSQL_PASSWORD: 'test-mysql-password',
  MYSQL_ROOT_PASSWORD: 'test-mysql-root-password',
};
const PLACEHOLDER = 'REPLACE-ME';

const COMPOSE_FILES: Record<string, Mode> = {
  'docker-compose.yml': 'monolithic',
  'docker-compose.layered.yml': 'layered',
  'docker-compose.microservices.yml': 'microservices',
  'docker-compose.mysql.yml': 'monolithic',
};

/** The database container each compose file runs, and how its credentials reach DATABASE_URL. */
interface DatabaseImage {
  image: RegExp;
  scheme: string;
  port: string;
  password: string;
  user: (env: Record<string, string>) => string;
  database: (env: Record<string, string>) => string;
}
const DATABASE_IMAGES: DatabaseImage[] = [
  {
    image: /^postgres:1[56](\.|-|$)/,
    scheme: 'postgresql:',
    port: '5432',
    password: 'POSTGRES_PASSWORD',
    user: (env) => env['POSTGRES_USER'] ?? 'postgres',
    database: (env) => env['POSTGRES_DB'] ?? env['POSTGRES_USER'] ?? 'postgres',
  },
  {
    // The spec's MySQL 8.0; the app's user is the one the image creates, never root.
    image: /^mysql:8\.0(\.|-|$)/,
    scheme: 'mysql:',
    port: '3306',
    password: 'MYSQL_PASSWORD',
    user: (env) => env['MYSQL_USER'] ?? '',
    database: (env) => env['MYSQL_DATABASE'] ?? '',
  },
];
const OVERLAYS: Record<string, Mode> = {
  'k8s/overlays/monolithic': 'monolithic',
  'k8s/overlays/layered': 'layered',
  'k8s/overlays/microservices': 'microservices',
};

// ---------------------------------------------------------------------------------------------
// Reading YAML without `any`.

type Mapping = Record<string, unknown>;

function isMapping(value: unknown): value is Mapping {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
function mapping(value: unknown, where: string): Mapping {
  if (!isMapping(value)) throw new Error(`${where}: expected a mapping, got ${JSON.stringify(value)}`);
  return value;
}
function sequence(value: unknown, where: string): unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new Error(`${where}: expected a list, got ${JSON.stringify(value)}`);
  return value as unknown[];
}
function scalar(value: unknown, where: string): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw new Error(`${where}: expected a scalar, got ${JSON.stringify(value)}`);
}
function field(value: unknown, path: string, where: string): unknown {
  let current = value;
  for (const key of path.split('.')) current = isMapping(current) ? current[key] : undefined;
  if (current === undefined) throw new Error(`${where}: ${path} is missing`);
  return current;
}
function stringMap(value: unknown, where: string): Record<string, string> {
  return Object.fromEntries(Object.entries(mapping(value ?? {}, where)).map(([k, v]) => [k, scalar(v, `${where}.${k}`)]));
}
function readText(path: string): string {
  return readFileSync(join(ROOT, path), 'utf8');
}

/** Computes a value on first use and keeps it. */
function once<T>(compute: () => T): () => T {
  let result: { value: T } | undefined;
  return () => {
    result ??= { value: compute() };
    return result.value;
  };
}

// ---------------------------------------------------------------------------------------------
// What src/config.ts reads: the keys of its EnvSchema.
/**
 * What deployments may set: the configuration's variables, and NODE_COMPILE_CACHE, which the entry
 * point (src/main.js) reads before the configuration is loaded.
 */
const CONFIG_VARIABLES = new Set<string>([...ENVIRONMENT_VARIABLES, 'NODE_COMPILE_CACHE']);

function accepted(env: Environment, where: string): ReturnType<typeof loadConfig> {
  try {
    return loadConfig(env);
  } catch (error) {
    throw new Error(`${where}: loadConfig refused its environment: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile: stages, and what each target's image ends up with.

interface Instruction {
  keyword: string;
  args: string;
}
interface Stage {
  name: string;
  base: string;
  instructions: Instruction[];
}
interface CopyStep {
  from: string | undefined;
  sources: string[];
  destination: string;
}
interface Image {
  baseImage: string;
  env: Record<string, string>;
  exposed: number[];
  user: string | undefined;
  workdir: string;
  healthcheck: string[] | undefined;
  cmd: string[] | undefined;
  copies: CopyStep[];
  runs: string[];
}

/** The stages of a Dockerfile by name, with ARG defaults declared before the first FROM substituted. */
function parseDockerfile(text: string): Map<string, Stage> {
  const logical: string[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || (line === '' && pending === '')) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    logical.push(pending + line);
    pending = '';
  }
  const args: Record<string, string> = {};
  const stages = new Map<string, Stage>();
  let current: Stage | undefined;
  for (const line of logical.filter((l) => l !== '')) {
    const match = /^(\S+)\s+([\s\S]*)$/.exec(line);
    if (match === null) throw new Error(`${DOCKERFILE}: cannot parse "${line}"`);
    const keyword = (match[1] ?? '').toUpperCase();
    const rest = match[2] ?? '';
    if (keyword === 'FROM') {
      const from = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest);
      if (from === null) throw new Error(`${DOCKERFILE}: cannot parse "${line}"`);
      const name = from[2] ?? `#${stages.size}`;
      current = { name, base: (from[1] ?? '').replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a?: string, b?: string) => args[a ?? b ?? ''] ?? ''), instructions: [] };
      stages.set(name, current);
    } else if (current === undefined) {
      if (keyword !== 'ARG') throw new Error(`${DOCKERFILE}: ${keyword} before the first FROM`);
      const arg = /^(\w+)(?:=(.*))?$/.exec(rest);
      if (arg?.[1] !== undefined) args[arg[1]] = arg[2] ?? '';
    } else {
      current.instructions.push({ keyword, args: rest });
    }
  }
  return stages;
}

function parseJsonArray(text: string, where: string): string[] {
  const parsed: unknown = JSON.parse(text);
  return sequence(parsed, where).map((item) => scalar(item, where));
}

/** The image configuration of `target`, following its chain of stages back to the base image. */
function imageOf(stages: Map<string, Stage>, target: string): Image {
  const chain: Stage[] = [];
  for (let stage = stages.get(target); stage !== undefined; stage = stages.get(stage.base)) {
    if (chain.includes(stage)) throw new Error(`${DOCKERFILE}: stage ${stage.name} inherits from itself`);
    chain.unshift(stage);
  }
  const first = chain[0];
  if (first === undefined) throw new Error(`${DOCKERFILE}: no stage named ${target}`);
  const image: Image = {
    baseImage: first.base,
    env: {},
    exposed: [],
    user: undefined,
    workdir: '/',
    healthcheck: undefined,
    cmd: undefined,
    copies: [],
    runs: [],
  };
  for (const { keyword, args } of chain.flatMap((stage) => stage.instructions)) {
    if (keyword === 'ENV') {
      for (const pair of args.matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|'[^']*'|\S+)/g)) {
        image.env[pair[1] ?? ''] = (pair[2] ?? '').replace(/^(["'])([\s\S]*)\1$/, '$2');
      }
    } else if (keyword === 'EXPOSE') {
      image.exposed.push(...args.split(/\s+/).map((port) => Number(port.replace(/\/tcp$/, ''))));
    } else if (keyword === 'USER') {
      image.user = args.trim();
    } else if (keyword === 'WORKDIR') {
      image.workdir = posix.resolve(image.workdir, args.trim());
    } else if (keyword === 'HEALTHCHECK') {
      const cmd = /\bCMD\s+(\[[\s\S]*\])\s*$/.exec(args);
      image.healthcheck = cmd?.[1] === undefined ? undefined : parseJsonArray(cmd[1], 'HEALTHCHECK');
    } else if (keyword === 'CMD') {
      image.cmd = parseJsonArray(args, 'CMD');
    } else if (keyword === 'RUN') {
      image.runs.push(args);
    } else if (keyword === 'COPY') {
      const words = args.split(/\s+/);
      const flags = words.filter((word) => word.startsWith('--'));
      const paths = words.filter((word) => !word.startsWith('--'));
      const destination = paths.pop();
      if (destination === undefined || paths.length === 0) throw new Error(`${DOCKERFILE}: cannot parse COPY ${args}`);
      const from = flags.find((flag) => flag.startsWith('--from='))?.slice('--from='.length);
      image.copies.push({ from, sources: paths, destination: posix.resolve(image.workdir, destination) + (destination.endsWith('/') ? '/' : '') });
    }
  }
  return image;
}

const dockerfileStages = parseDockerfile(readText(DOCKERFILE));

// .dockerignore as BuildKit reads it: the last pattern matching a path or one of its parents wins.
function dockerignored(path: string): boolean {
  const patterns = readText('.dockerignore')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const negated = line.startsWith('!');
      const pattern = posix.normalize(line.slice(negated ? 1 : 0)).replace(/^\/+|\/+$/g, '');
      const regex = pattern
        .split(/(\*\*\/?|\*|\?)/)
        .map((part) => (part === '**' || part === '**/' ? '.*' : part === '*' ? '[^/]*' : part === '?' ? '[^/]' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
        .join('');
      return { negated, regex: new RegExp(`^${regex}$`) };
    });
  const segments = path.split('/');
  const prefixes = segments.map((_, i) => segments.slice(0, i + 1).join('/'));
  let excluded = false;
  for (const { negated, regex } of patterns) {
    if (prefixes.some((prefix) => regex.test(prefix))) excluded = !negated;
  }
  return excluded;
}

/** The repository path whose contents land at `imagePath`, from a COPY of the build context. */
function copiedFrom(image: Image, imagePath: string): string | undefined {
  for (const copy of image.copies.filter((c) => c.from === undefined)) {
    for (const source of copy.sources) {
      const repoSource = posix.normalize(source).replace(/\/$/, '');
      if (/[*?[]/.test(repoSource)) throw new Error(`${DOCKERFILE}: COPY with a wildcard (${source}) is not checked`);
      if (!existsSync(join(ROOT, repoSource))) continue;
      const destination = copy.destination.replace(/\/$/, '');
      if (statSync(join(ROOT, repoSource)).isDirectory()) {
        if (imagePath === destination || imagePath.startsWith(`${destination}/`)) {
          return posix.join(repoSource, imagePath.slice(destination.length));
        }
      } else {
        const intoDirectory = copy.destination.endsWith('/') || copy.sources.length > 1;
        if ((intoDirectory ? posix.join(destination, basename(repoSource)) : destination) === imagePath) return repoSource;
      }
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Docker Compose: interpolation as `docker compose` does it, with the operator's values above.

function interpolate(value: string, used: Set<string>, where: string): string {
  return value.replace(/\$\$|\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)/g, (whole, braced?: string, operator?: string, argument?: string, bare?: string) => {
    if (whole === '$$') return '$';
    const name = braced ?? bare ?? '';
    used.add(name);
    if (operator?.endsWith('?') === true) {
      const supplied = TEST_VALUES[name];
      if (supplied === undefined) throw new Error(`${where}: ${name} is required; give the test a value for it`);
      return supplied;
    }
    if (operator?.endsWith('-') === true) return argument ?? '';
    return TEST_VALUES[name] ?? '';
  });
}

interface ComposeService {
  name: string;
  spec: Mapping;
  /** The `environment` as written, before interpolation. */
  rawEnv: Record<string, string>;
  /** The `environment` after interpolation. */
  env: Record<string, string>;
}
interface ComposeFile {
  services: Map<string, ComposeService>;
  variables: Set<string>;
}

function environmentOf(value: unknown, where: string): Record<string, string> {
  if (Array.isArray(value)) {
    return Object.fromEntries(
      sequence(value, where).map((entry) => {
        const text = scalar(entry, where);
        const at = text.indexOf('=');
        return at < 0 ? [text, ''] : [text.slice(0, at), text.slice(at + 1)];
      }),
    );
  }
  return Object.fromEntries(
    Object.entries(mapping(value ?? {}, where))
      .filter(([, v]) => v !== null)
      .map(([k, v]) => [k, scalar(v, `${where}.${k}`)]),
  );
}

function loadCompose(file: string): ComposeFile {
  const document = mapping(load(readText(file)), file);
  const variables = new Set<string>();
  const interpolateAll = (value: unknown, where: string): unknown => {
    if (typeof value === 'string') return interpolate(value, variables, where);
    if (Array.isArray(value)) return value.map((item: unknown, i) => interpolateAll(item, `${where}[${i}]`));
    if (isMapping(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolateAll(v, `${where}.${k}`)]));
    return value;
  };
  const services = new Map<string, ComposeService>();
  for (const [name, raw] of Object.entries(mapping(document['services'], `${file}: services`))) {
    const where = `${file}: services.${name}`;
    const spec = mapping(interpolateAll(raw, where), where);
    const rawEnv = environmentOf(mapping(raw, where)['environment'], `${where}.environment`);
    services.set(name, { name, spec, rawEnv, env: environmentOf(spec['environment'], `${where}.environment`) });
  }
  return { services, variables };
}

function buildTarget(service: ComposeService): string | undefined {
  const build = service.spec['build'];
  return isMapping(build) ? scalar(build['target'], `${service.name}.build.target`) : undefined;
}

/** Container ports published on the host, from short ("3000:3000") or long syntax. */
function publishedContainerPorts(service: ComposeService): number[] {
  return sequence(service.spec['ports'], `${service.name}.ports`).map((entry) => {
    if (isMapping(entry)) return Number(scalar(entry['target'], `${service.name}.ports.target`));
    const parts = scalar(entry, `${service.name}.ports`)
      .replace(/\/tcp$/, '')
      .split(':');
    return Number(parts[parts.length - 1]);
  });
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: a kustomization resolved the way `kustomize build` would for what these files
// use (resources, and generators with literals or env files), without the name hashes.

interface K8sObject {
  kind: string;
  name: string;
  spec: Mapping;
  /** ConfigMap and Secret contents, as strings. */
  data: Record<string, string>;
  source: string;
}
const KUSTOMIZATION_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'configMapGenerator', 'secretGenerator', 'generatorOptions']);

function resolveKustomization(directory: string, seen = new Set<string>()): K8sObject[] {
  if (seen.has(directory)) throw new Error(`${directory}: included twice`);
  seen.add(directory);
  const file = posix.join(directory, 'kustomization.yaml');
  const kustomization = mapping(load(readText(file)), file);
  const unsupported = Object.keys(kustomization).filter((key) => !KUSTOMIZATION_FIELDS.has(key));
  if (unsupported.length > 0) throw new Error(`${file}: ${unsupported.join(', ')} cannot be resolved by this test; keep to resources and generators`);
  const objects: K8sObject[] = [];
  for (const entry of sequence(kustomization['resources'], `${file}: resources`)) {
    const path = posix.normalize(posix.join(directory, scalar(entry, `${file}: resources`)));
    if (!existsSync(join(ROOT, path))) throw new Error(`${file}: resource ${path} does not exist`);
    if (statSync(join(ROOT, path)).isDirectory()) {
      objects.push(...resolveKustomization(path, seen));
      continue;
    }
    for (const document of loadAll(readText(path))) {
      if (document === null || document === undefined) continue;
      const object = mapping(document, path);
      const kind = scalar(object['kind'], `${path}: kind`);
      const name = scalar(field(object, 'metadata.name', path), `${path}: metadata.name`);
      objects.push({
        kind,
        name,
        spec: mapping(object['spec'] ?? {}, `${path}: ${kind}/${name}`),
        data: kind === 'Secret' ? { ...decodeSecret(object['data'], path), ...stringMap(object['stringData'], path) } : stringMap(object['data'], path),
        source: path,
      });
    }
  }
  for (const [generatorField, kind] of [
    ['configMapGenerator', 'ConfigMap'],
    ['secretGenerator', 'Secret'],
  ] as const) {
    for (const raw of sequence(kustomization[generatorField], `${file}: ${generatorField}`)) {
      const generator = mapping(raw, `${file}: ${generatorField}`);
      const name = scalar(generator['name'], `${file}: ${generatorField}.name`);
      const extra = Object.keys(generator).filter((key) => !['name', 'literals', 'envs', 'type'].includes(key));
      if (extra.length > 0) throw new Error(`${file}: ${generatorField} ${name}: ${extra.join(', ')} is not resolved by this test`);
      const lines = [
        ...sequence(generator['literals'], `${file}: ${name}.literals`).map((l) => scalar(l, `${file}: ${name}.literals`)),
        ...sequence(generator['envs'], `${file}: ${name}.envs`).flatMap((envFile) =>
          readText(posix.join(directory, scalar(envFile, `${file}: ${name}.envs`)))
            .split('\n')
            .map((line) => line.trim())
            .filter((line) => line !== '' && !line.startsWith('#')),
        ),
      ];
      const data: Record<string, string> = {};
      for (const line of lines) {
        const at = line.indexOf('=');
        if (at <= 0) throw new Error(`${file}: ${generatorField} ${name}: "${line}" is not KEY=value`);
        data[line.slice(0, at)] = line.slice(at + 1);
      }
      objects.push({ kind, name, spec: {}, data, source: file });
    }
  }
  return objects;
}

function decodeSecret(value: unknown, where: string): Record<string, string> {
  return Object.fromEntries(Object.entries(stringMap(value, where)).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
}

function labelsMatch(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

interface Workload {
  name: string;
  source: string;
  target: string;
  labels: Record<string, string>;
  podSpec: Mapping;
  container: Mapping;
  containerPorts: Map<string, number>;
}

function workloadsOf(objects: K8sObject[]): Workload[] {
  return objects
    .filter((object) => object.kind === 'Deployment' || object.kind === 'StatefulSet')
    .flatMap((object) => {
      const where = `${object.source}: ${object.kind}/${object.name}`;
      const podSpec = mapping(field(object.spec, 'template.spec', where), where);
      const labels = stringMap(field(object.spec, 'template.metadata.labels', where), where);
      return sequence(podSpec['containers'], `${where}.containers`).flatMap((raw) => {
        const container = mapping(raw, where);
        const image = /^arcana-cloud\/([\w-]+):/.exec(scalar(container['image'], `${where}.image`));
        if (image === null) return [];
        const containerPorts = new Map<string, number>();
        for (const port of sequence(container['ports'], `${where}.ports`)) {
          const p = mapping(port, where);
          const number = Number(scalar(p['containerPort'], `${where}.containerPort`));
          containerPorts.set(String(number), number);
          if (p['name'] !== undefined) containerPorts.set(scalar(p['name'], where), number);
        }
        return [{ name: object.name, source: where, target: image[1] ?? '', labels, podSpec, container, containerPorts }];
      });
    });
}

/** The container's environment as Kubernetes builds it: envFrom first, then env on top. */
function environmentOfContainer(workload: Workload, objects: K8sObject[], replacePlaceholders: boolean): Record<string, string> {
  const where = workload.source;
  const source = (kind: 'ConfigMap' | 'Secret', name: string): Record<string, string> => {
    const found = objects.find((object) => object.kind === kind && object.name === name);
    if (found === undefined) throw new Error(`${where}: refers to ${kind} ${name}, which the overlay does not define`);
    if (kind === 'ConfigMap' || !replacePlaceholders) return found.data;
    return Object.fromEntries(
      Object.entries(found.data).map(([key, value]) => [key, value.includes(PLACEHOLDER) ? (TEST_VALUES[key] ?? value.replaceAll(PLACEHOLDER, 'test-password')) : value]),
    );
  };
  const env: Record<string, string> = {};
  for (const raw of sequence(workload.container['envFrom'], `${where}.envFrom`)) {
    const entry = mapping(raw, `${where}.envFrom`);
    if (entry['prefix'] !== undefined) throw new Error(`${where}: envFrom prefix is not resolved by this test`);
    if (isMapping(entry['configMapRef'])) Object.assign(env, source('ConfigMap', scalar(entry['configMapRef']['name'], where)));
    else if (isMapping(entry['secretRef'])) Object.assign(env, source('Secret', scalar(entry['secretRef']['name'], where)));
    else throw new Error(`${where}: unknown envFrom ${JSON.stringify(entry)}`);
  }
  for (const raw of sequence(workload.container['env'], `${where}.env`)) {
    const entry = mapping(raw, `${where}.env`);
    const name = scalar(entry['name'], `${where}.env.name`);
    if (entry['value'] !== undefined) {
      env[name] = scalar(entry['value'], `${where}.env.${name}`);
      continue;
    }
    const from = mapping(entry['valueFrom'], `${where}.env.${name}.valueFrom`);
    const ref = from['secretKeyRef'] ?? from['configMapKeyRef'];
    if (!isMapping(ref)) throw new Error(`${where}: env ${name} uses a valueFrom this test does not resolve`);
    const data = source(from['secretKeyRef'] !== undefined ? 'Secret' : 'ConfigMap', scalar(ref['name'], where));
    const value = data[scalar(ref['key'], where)];
    if (value === undefined) throw new Error(`${where}: env ${name} refers to a key that does not exist`);
    env[name] = value;
  }
  return env;
}

function resolvePort(workload: Workload, port: unknown): number | undefined {
  return workload.containerPorts.get(scalar(port, `${workload.source}: port`));
}

/**
 * A pod that may connect: its labels, and its namespace's labels (undefined: the namespace the
 * manifests are applied to, whose labels the manifests do not set).
 */
interface NetworkPeer {
  labels: Record<string, string>;
  namespace?: Record<string, string> | undefined;
}

/** The namespace of the ingress controller the edge policies admit (see the overlays' network-policy.yaml). */
const INGRESS_NAMESPACE = { 'kubernetes.io/metadata.name': 'ingress-nginx' };

/** Whether `from` may open `port` on `to` (a pod of the manifests' own namespace). */
function ingressAllowed(policies: K8sObject[], to: Record<string, string>, port: number, from: NetworkPeer): boolean {
  const selector = (value: unknown, where: string): Record<string, string> => {
    const s = mapping(value, where);
    if (s['matchExpressions'] !== undefined) throw new Error(`${where}: matchExpressions are not evaluated by this test`);
    return stringMap(s['matchLabels'], where);
  };
  const isolating = policies.filter((policy) => {
    const types = sequence(policy.spec['policyTypes'], policy.name).map((t) => scalar(t, policy.name));
    return (types.length === 0 || types.includes('Ingress')) && labelsMatch(selector(policy.spec['podSelector'], policy.name), to);
  });
  if (isolating.length === 0) return true;
  return isolating.some((policy) =>
    sequence(policy.spec['ingress'], policy.name).some((raw) => {
      const rule = mapping(raw, policy.name);
      const peers = sequence(rule['from'], policy.name);
      const peerAllowed =
        peers.length === 0 ||
        peers.some((rawPeer) => {
          const peer = mapping(rawPeer, policy.name);
          if (peer['ipBlock'] !== undefined) throw new Error(`${policy.name}: ipBlock peers are not evaluated by this test`);
          // A podSelector alone selects pods of the policy's own namespace; a namespaceSelector,
          // pods of the namespaces it selects (with a podSelector too, those pods only).
          const namespaceOk =
            peer['namespaceSelector'] === undefined ? from.namespace === undefined : labelsMatch(selector(peer['namespaceSelector'], policy.name), from.namespace ?? {});
          const podOk = peer['podSelector'] === undefined || labelsMatch(selector(peer['podSelector'], policy.name), from.labels);
          return namespaceOk && podOk;
        });
      const ports = sequence(rule['ports'], policy.name).map((p) => mapping(p, policy.name));
      const portAllowed =
        ports.length === 0 ||
        ports.some((p) => {
          if (typeof p['port'] !== 'number') throw new Error(`${policy.name}: give policy ports as numbers`);
          return p['port'] === port && (p['protocol'] === undefined || p['protocol'] === 'TCP');
        });
      return peerAllowed && portAllowed;
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Checks shared by Compose and Kubernetes: one topology's processes and their configuration.

interface AppProcess {
  /** The Compose service or Deployment name: the host name other processes use. */
  name: string;
  where: string;
  target: string;
  env: Record<string, string>;
  listenPort: number;
}

function expectTopology(mode: Mode, processes: AppProcess[]): void {
  const layers = processes.map((app) => app.env['DEPLOYMENT_LAYER']);
  expect(layers.toSorted()).toEqual([...LAYERS[mode]].toSorted());
  for (const app of processes) {
    const layer = app.env['DEPLOYMENT_LAYER'] as Layer;
    expect(app.env['DEPLOYMENT_MODE'], app.where).toBe(mode);
    expect(app.target, `${app.where}: image target`).toBe(layer);
    expect(dockerfileStages.has(app.target), `${app.where}: Dockerfile target ${app.target}`).toBe(true);
    expect(app.env['COMMUNICATION_PROTOCOL'], app.where).toBe(mode === 'monolithic' ? 'direct' : 'grpc');
    expect(app.env['PORT'], app.where).toBe(String(PORTS[layer]));
    expect(app.listenPort, `${app.where}: container port`).toBe(PORTS[layer]);
    // The signing key only where tokens are signed and checked: never the internet-facing
    // controller, nor the repository (helper 95).
    const signs = holdingsOf(layer).auth || holdingsOf(layer).users;
    expect(app.env['JWT_SECRET'] !== undefined, `${app.where}: holds JWT_SECRET`).toBe(signs);
    expect(app.env['REDIS_URL'], `${app.where}: REDIS_URL`).toMatch(/^rediss?:\/\//);
    expect(app.env['DATABASE_URL'] !== undefined, `${app.where}: holds DATABASE_URL`).toBe(HOLDS_DATABASE.includes(layer));
    const urlVariables = Object.keys(app.env).filter((name) => name.endsWith('_URLS') && app.env[name] !== '');
    expect(urlVariables.toSorted(), `${app.where}: *_URLS`).toEqual([...(URLS_NEEDED[mode][layer] ?? [])].toSorted());

    const config = accepted(app.env, app.where);
    expect(config.deployment.mode).toBe(mode);
    expect(config.deployment.layer).toBe(layer);
    expect(config.server.port).toBe(app.listenPort);
  }
}

/** Every URL of every *_URLS variable, with the layer it must reach. */
function internalUrls(app: AppProcess): { variable: string; url: URL; layer: Layer }[] {
  return Object.entries(URL_TARGETS).flatMap(([variable, layer]) =>
    (app.env[variable] ?? '')
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item !== '')
      .map((item) => {
        const url = new URL(item);
        expect(url.protocol, `${app.where}: ${variable}`).toBe('http:');
        expect(url.port, `${app.where}: ${variable} names its port`).not.toBe('');
        return { variable, url, layer };
      }),
  );
}

function expectKnownVariables(names: Iterable<string>, where: string, allowed = new Set<string>()): void {
  const unknown = [...names].filter((name) => !CONFIG_VARIABLES.has(name) && !allowed.has(name));
  expect(unknown, `${where}: variables neither src/config.ts nor src/main.js reads`).toEqual([]);
}

// ---------------------------------------------------------------------------------------------

describe('docker/Dockerfile', () => {
  const targets: Layer[] = ['monolithic', 'controller', 'service', 'repository', 'auth-service', 'user-service'];

  it.each(targets)('when the %s target is built, then it holds that layer, exposes its port and runs as a non-root user', (target) => {
    expect(dockerfileStages.has(target), `no stage named ${target}`).toBe(true);
    const image = imageOf(dockerfileStages, target);
    expect(image.baseImage).toMatch(/^node:24(\.\d+)*(-slim|-alpine[\d.]*)?(@sha256:[0-9a-f]+)?$/);
    expect(image.env['DEPLOYMENT_LAYER']).toBe(target);
    const mode = image.env['DEPLOYMENT_MODE'] as Mode;
    expect(LAYERS[mode], `DEPLOYMENT_MODE=${mode}`).toContain(target);
    expect(image.env['PORT']).toBe(String(PORTS[target]));
    expect(image.exposed).toEqual([PORTS[target]]);
    expect(image.user).toBeDefined();
    expect(image.user).not.toMatch(/^(root|0)(:|$)/);
    expect(image.cmd).toEqual(['node', ...SERVER_NODE_FLAGS, 'src/main.js']);
    expect(image.healthcheck?.[0]).toBe('node');
    expect(image.healthcheck?.join(' ')).toMatch(/fetch\([\s\S]*\/health/);
    expect(image.healthcheck?.join(' ')).toContain('process.env.PORT');
    expectKnownVariables(Object.keys(image.env), `${DOCKERFILE} ${target}`);
  });

  it('when a container starts, then CMD runs src/main.js, which the image holds with everything the app reads at run time', () => {
    const image = imageOf(dockerfileStages, 'monolithic');
    const entry = image.cmd?.at(-1) ?? '';
    expect(existsSync(join(ROOT, entry)), `${entry} exists`).toBe(true);
    // src/app.ts finds these next to src/: the version in package.json, the OpenAPI document
    // that validates requests, the migrations applied at start-up, the console's build, and the
    // .proto files and page that /docs serves.
    for (const path of [
      entry,
      'src/app.ts',
      'gen/prisma/client.ts',
      'package.json',
      'openapi.yaml',
      'prisma/migrations',
      'console/dist',
      'proto/arcana/user/v1/user_service.proto',
      'src/controllers/rest/docs/index.html',
    ]) {
      const imagePath = posix.resolve(image.workdir, path);
      expect(existsSync(join(ROOT, path)), `${path} exists`).toBe(true);
      expect(copiedFrom(image, imagePath), `${imagePath} comes from ${path}`).toBe(path);
      expect(dockerignored(path), `.dockerignore keeps ${path} out of the build context`).toBe(false);
    }
  });

  it('when the server is started by npm start, then it gets the same V8 heap settings as the image and scripts/topology.ts', () => {
    const scripts = (JSON.parse(readText('package.json')) as { scripts: Record<string, string> }).scripts;
    // exec: npm's SIGTERM then reaches node, not the sh between them (see server-process).
    expect(scripts['start']).toBe(['exec', 'node', ...SERVER_NODE_FLAGS, 'src/main.js'].join(' '));
    // npm run dev as well: without exec, npm's SIGTERM left node --watch and its server serving (helper 195).
    expect(scripts['dev']).toBe('exec node --watch src/main.js');
    expect(readText('scripts/topology.ts')).toMatch(/spawn\(process\.execPath, \[\.\.\.SERVER_NODE_FLAGS, join\(ROOT, 'src', 'main\.js'\)\]/);
  });

  it('when the image installs production dependencies only, then every package the sources import is installed', () => {
    // The stage whose node_modules the runtime image copies is where the install happens.
    const runtime = imageOf(dockerfileStages, 'monolithic');
    const installStage = runtime.copies.find((copy) => copy.from !== undefined && copy.sources.some((s) => s.endsWith('node_modules')))?.from;
    expect(installStage, 'the image copies node_modules from an install stage').toBeDefined();
    const install = imageOf(dockerfileStages, installStage ?? '').runs.find((run) => /\bnpm ci\b/.test(run));
    expect(install, `the ${installStage ?? '?'} stage runs npm ci`).toBeDefined();
    const omitted = new Set([...(install ?? '').matchAll(/--omit[= ](\w+)/g)].map((m) => m[1]));
    expect(omitted.has('dev')).toBe(true);

    const packageJson = mapping(JSON.parse(readText('package.json')), 'package.json');
    const dependencies = Object.keys(mapping(packageJson['dependencies'], 'package.json dependencies'));
    const lock = mapping(field(JSON.parse(readText('package-lock.json')), 'packages', 'package-lock.json'), 'package-lock.json');
    const flag = (entry: unknown, name: string): boolean => isMapping(entry) && entry[name] === true;

    const files = (directory: string): string[] =>
      readdirSync(join(ROOT, directory), { recursive: true, encoding: 'utf8' })
        .filter((file) => /\.(ts|js|mjs)$/.test(file) && !file.endsWith('.d.ts'))
        .map((file) => posix.join(directory, file));
    const imported = new Set<string>();
    for (const file of [...files('src'), ...files('gen')]) {
      const source = readText(file);
      const specifiers = [
        // Type-only imports are erased by Node, so they need nothing at run time.
        ...[...source.matchAll(/\b(?:import|export)\s+(type\s+)?(?:[^'";]*?\bfrom\s+)?['"]([^'"]+)['"]/g)].filter((m) => m[1] === undefined).map((m) => m[2] ?? ''),
        ...[...source.matchAll(/\b(?:import|require(?:\.resolve)?)\(\s*['"]([^'"]+)['"]/g)].map((m) => m[1] ?? ''),
      ];
      for (const specifier of specifiers) {
        if (specifier.startsWith('.') || specifier.startsWith('/') || isBuiltin(specifier)) continue;
        const parts = specifier.split('/');
        imported.add(specifier.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] ?? ''));
      }
    }
    expect(imported.size).toBeGreaterThan(0);
    for (const name of imported) {
      expect(dependencies, `${name} is imported by the sources but is not a dependency`).toContain(name);
      const entry = lock[`node_modules/${name}`];
      const installed =
        !(flag(entry, 'dev') && omitted.has('dev')) &&
        !(flag(entry, 'optional') && omitted.has('optional')) &&
        !(flag(entry, 'devOptional') && omitted.has('dev') && omitted.has('optional'));
      expect(installed, `npm ci ${[...omitted].map((o) => `--omit=${o}`).join(' ')} leaves out ${name}`).toBe(true);
    }
  });

  it('when the build context is sent, then local state and secrets stay out of it', () => {
    for (const path of ['node_modules/express/package.json', '.git/HEAD', '.data/PG_VERSION', '.env', 'tests/unit/config.test.ts', 'server.log']) {
      expect(dockerignored(path), path).toBe(true);
    }
  });
});

describe.each(Object.entries(COMPOSE_FILES))('%s', (file, mode) => {
  // Read when a test runs, so that a file that cannot be read fails its tests, not the whole suite.
  const composeFile = once(() => {
    const compose = loadCompose(file);
    const services = [...compose.services.values()];
    return { compose, services, apps: services.filter((service) => buildTarget(service) !== undefined) };
  });
  const processes = (): AppProcess[] =>
    composeFile().apps.map((service) => {
      const target = buildTarget(service) ?? '';
      // What the process sees: the image's ENV defaults, overridden by the compose environment.
      const env = { ...imageOf(dockerfileStages, target).env, ...service.env };
      return { name: service.name, where: `${file}: ${service.name}`, target, env, listenPort: Number(service.env['PORT']) };
    });

  it('when its header says how to start it, then every secret and password there is generated, none a literal production refuses', () => {
    // The headers said POSTGRES_PASSWORD=change-me, which production now refuses as a value this
    // repository publishes (helper 167: every documented start failed).
    const header = readText(file)
      .split('\n')
      .filter((line) => line.startsWith('#'))
      .join('\n');
    const assignments = [...header.matchAll(/\b([A-Z_]*(?:PASSWORD|SECRET))=(\S+)/g)].map(([, name, value]) => ({ name, value }));
    expect(assignments.length).toBeGreaterThan(0);
    expect(assignments.filter(({ value }) => !value?.startsWith('$('))).toEqual([]);
  });

  it(`when started, then it runs the ${mode} topology from docker/Dockerfile's targets, each process accepted by loadConfig`, () => {
    const { apps } = composeFile();
    for (const service of apps) {
      const build = mapping(service.spec['build'], service.name);
      expect(build['context'], service.name).toBe('.');
      expect(build['dockerfile'], service.name).toBe(DOCKERFILE);
      // The layer is set by the file, not left to the image's defaults.
      for (const name of ['DEPLOYMENT_MODE', 'DEPLOYMENT_LAYER', 'COMMUNICATION_PROTOCOL', 'PORT', 'NODE_ENV']) {
        expect(service.env[name], `${service.name}: ${name}`).toBeDefined();
      }
      const exposed = sequence(service.spec['expose'], service.name).map((port) => Number(scalar(port, service.name)));
      for (const port of [...exposed, ...publishedContainerPorts(service)]) {
        expect(port, `${service.name}: exposes or publishes the port it listens on`).toBe(Number(service.env['PORT']));
      }
    }
    expectTopology(mode, processes());
  });

  it('when a process calls another layer, then each *_URLS entry names a service of the file on the port it listens on', () => {
    const { compose } = composeFile();
    for (const app of processes()) {
      for (const { variable, url, layer } of internalUrls(app)) {
        const target = compose.services.get(url.hostname);
        expect(target, `${app.where}: ${variable} names ${url.hostname}`).toBeDefined();
        expect(target?.env['DEPLOYMENT_LAYER'], `${app.where}: ${variable}`).toBe(layer);
        expect(url.port, `${app.where}: ${variable}`).toBe(target?.env['PORT']);
      }
    }
  });

  it('when started, then only the edge process publishes a port, the one it listens on', () => {
    const { services } = composeFile();
    for (const service of services) {
      const published = publishedContainerPorts(service);
      if (EDGE.includes(service.env['DEPLOYMENT_LAYER'] as Layer)) expect(published, service.name).toEqual([Number(service.env['PORT'])]);
      else expect(published, `${service.name} publishes no port`).toEqual([]);
    }
  });

  it('when started, then every process waits for what it calls to be healthy, and everything has a healthcheck', () => {
    const { compose, services } = composeFile();
    for (const service of services) {
      const test = sequence(field(service.spec, 'healthcheck.test', service.name), service.name);
      expect(test.length, `${service.name}: healthcheck`).toBeGreaterThan(0);
      const dependsOn = service.spec['depends_on'];
      if (Array.isArray(dependsOn)) throw new Error(`${file}: ${service.name}: depends_on needs the long form with a condition`);
      for (const [dependency, raw] of Object.entries(mapping(dependsOn ?? {}, service.name))) {
        expect(compose.services.has(dependency), `${service.name} depends on ${dependency}`).toBe(true);
        expect(mapping(raw, dependency)['condition'], `${service.name} → ${dependency}`).toBe('service_healthy');
      }
    }
    for (const app of processes()) {
      const waitsFor = Object.keys(mapping(compose.services.get(app.name)?.spec['depends_on'] ?? {}, app.name));
      const calls = [
        ...internalUrls(app).map(({ url }) => url.hostname),
        ...['DATABASE_URL', 'REDIS_URL'].flatMap((name) => (app.env[name] === undefined ? [] : [new URL(app.env[name] ?? '').hostname])),
      ];
      expect(waitsFor.toSorted(), `${app.where}: depends_on`).toEqual([...new Set(calls)].toSorted());
    }
  });

  it('when started, then the secrets come from the environment and the database credentials match', () => {
    const { services, apps } = composeFile();
    const databases = services.flatMap((service) => {
      const kind = DATABASE_IMAGES.find((each) => each.image.test(scalar(service.spec['image'] ?? '', service.name)));
      return kind === undefined ? [] : [{ service, kind }];
    });
    const redis = services.filter((service) => /^redis:7(\.|-|$)/.test(scalar(service.spec['image'] ?? '', service.name)));
    expect(databases).toHaveLength(1);
    expect(redis).toHaveLength(1);
    const db = databases[0]?.service;
    const kind = databases[0]!.kind;
    expect(db?.rawEnv[kind.password]).toMatch(new RegExp(`^\\$\\{${kind.password}:\\?[^}]+\\}$`));
    for (const [name, value] of Object.entries(db?.rawEnv ?? {})) {
      if (name.includes('PASSWORD')) expect(value, `${db?.name}: ${name}`).toMatch(new RegExp(`^\\$\\{${name}:\\?[^}]+\\}$`));
    }
    for (const app of apps) {
      const layer = app.env['DEPLOYMENT_LAYER'] as Layer;
      if (holdingsOf(layer).auth || holdingsOf(layer).users) expect(app.rawEnv['JWT_SECRET'], `${app.name}: JWT_SECRET`).toMatch(/^\$\{JWT_SECRET:\?[^}]+\}$/);
      if (app.env['DEPLOYMENT_MODE'] !== 'monolithic') {
        expect(app.rawEnv['INTERNAL_API_SECRET'], `${app.name}: INTERNAL_API_SECRET`).toMatch(/^\$\{INTERNAL_API_SECRET:\?[^}]+\}$/);
      }
      const databaseUrl = app.env['DATABASE_URL'];
      if (databaseUrl !== undefined) {
        expect(app.rawEnv['DATABASE_URL']).toContain(`\${${kind.password}`);
        const url = new URL(databaseUrl);
        expect(url.protocol).toBe(kind.scheme);
        expect(url.hostname).toBe(db?.name);
        expect(url.port === '' ? kind.port : url.port).toBe(kind.port);
        expect(decodeURIComponent(url.username)).toBe(kind.user(db?.env ?? {}));
        expect(decodeURIComponent(url.password)).toBe(db?.env[kind.password]);
        expect(url.pathname.slice(1)).toBe(kind.database(db?.env ?? {}));
      }
      const redisUrl = new URL(app.env['REDIS_URL'] ?? '');
      expect(redisUrl.hostname, `${app.name}: REDIS_URL`).toBe(redis[0]?.name);
      expect(redisUrl.port === '' ? '6379' : redisUrl.port).toBe('6379');
    }
  });

  it('when an application container runs, then its root file system is read-only (a tmpfs /tmp), it has no capabilities and cannot gain privileges', () => {
    // As the Kubernetes pods run (helper 95 found the Compose services without any of it).
    for (const service of composeFile().apps) {
      expect(service.spec['read_only'], `${service.name}: read_only`).toBe(true);
      expect(service.spec['tmpfs'], `${service.name}: tmpfs`).toEqual(['/tmp']);
      expect(service.spec['cap_drop'], `${service.name}: cap_drop`).toEqual(['ALL']);
      expect(service.spec['security_opt'], `${service.name}: security_opt`).toEqual(['no-new-privileges:true']);
    }
  });

  it('when the file sets or interpolates a variable, then src/config.ts reads it or it belongs to the database container', () => {
    const { compose, services, apps } = composeFile();
    for (const service of services) {
      const names = Object.keys(service.env);
      if (apps.includes(service)) expectKnownVariables(names, `${file}: ${service.name}`);
      else
        expect(
          names.filter((name) => !INFRASTRUCTURE_VARIABLES.has(name)),
          `${file}: ${service.name}`,
        ).toEqual([]);
    }
    expectKnownVariables(compose.variables, `${file}: \${…}`, INFRASTRUCTURE_VARIABLES);
  });
});

describe.each(Object.entries(OVERLAYS))('%s', (overlay, mode) => {
  // Resolved when a test runs, so that an overlay that cannot be resolved fails its tests only.
  const resolved = once(() => {
    const objects = resolveKustomization(overlay);
    return {
      objects,
      workloads: workloadsOf(objects),
      services: objects.filter((object) => object.kind === 'Service'),
      policies: objects.filter((object) => object.kind === 'NetworkPolicy'),
    };
  });
  const processes = (replacePlaceholders = true): (AppProcess & { workload: Workload })[] =>
    resolved().workloads.map((workload) => {
      const env = environmentOfContainer(workload, resolved().objects, replacePlaceholders);
      const ports = [...new Set(workload.containerPorts.values())];
      const listenPort = ports.length === 1 ? (ports[0] ?? -1) : -1;
      return { name: workload.name, where: workload.source, target: workload.target, env, listenPort, workload };
    });
  /** The workload a Service's selector picks, and the container port a Service port reaches. */
  const route = (serviceName: string, port: number): { workload: Workload; containerPort: number | undefined } | undefined => {
    const { services, workloads } = resolved();
    const service = services.find((s) => s.name === serviceName);
    if (service === undefined) return undefined;
    const selector = stringMap(service.spec['selector'], service.name);
    const selected = workloads.filter((w) => labelsMatch(selector, w.labels));
    expect(
      selected.map((w) => w.name),
      `Service ${serviceName} selects one workload`,
    ).toHaveLength(1);
    const servicePort = sequence(service.spec['ports'], service.name)
      .map((p) => mapping(p, service.name))
      .find((p) => p['port'] === port);
    const workload = selected[0];
    if (servicePort === undefined || workload === undefined) return undefined;
    return { workload, containerPort: resolvePort(workload, servicePort['targetPort'] ?? servicePort['port']) };
  };

  it(`when resolved, then it runs the ${mode} topology, each process accepted by loadConfig`, () => {
    const { workloads } = resolved();
    expect(workloads.length).toBeGreaterThan(0);
    expectTopology(mode, processes());
  });

  it('when deployed, then probes, Services and container ports agree with PORT', () => {
    const { objects, services } = resolved();
    for (const { workload, env, where } of processes()) {
      const port = Number(env['PORT']);
      const probe = (name: string): Mapping => mapping(field(workload.container, `${name}.httpGet`, where), `${where}: ${name}`);
      expect(probe('livenessProbe')['path'], `${where}: liveness`).toBe('/health');
      expect(probe('readinessProbe')['path'], `${where}: readiness`).toBe('/ready');
      for (const name of ['livenessProbe', 'readinessProbe', ...(workload.container['startupProbe'] === undefined ? [] : ['startupProbe'])]) {
        expect(resolvePort(workload, probe(name)['port']), `${where}: ${name} port`).toBe(port);
      }
      if (workload.container['startupProbe'] !== undefined) expect(probe('startupProbe')['path']).toBe('/health');
      const deployment = objects.find((o) => o.kind === 'Deployment' && o.name === workload.name);
      const selector = stringMap(field(deployment?.spec, 'selector.matchLabels', where), where);
      expect(labelsMatch(selector, workload.labels), `${where}: selector matches its pods`).toBe(true);
      const service = services.find((s) => s.name === workload.name);
      expect(service, `${where}: a Service named ${workload.name}`).toBeDefined();
      expect(route(workload.name, port)?.containerPort, `${where}: Service port ${port} reaches the container port`).toBe(port);
    }
    for (const service of services) {
      for (const raw of sequence(service.spec['ports'], service.name)) {
        const port = Number(scalar(mapping(raw, service.name)['port'], service.name));
        expect(route(service.name, port)?.containerPort, `Service ${service.name}:${port}`).toBeDefined();
      }
    }
  });

  it('when a process calls another layer, then each *_URLS entry names a Service of the overlay that reaches that layer', () => {
    for (const app of processes()) {
      for (const { variable, url, layer } of internalUrls(app)) {
        const serviceName = url.hostname.split('.')[0] ?? '';
        const reached = route(serviceName, Number(url.port));
        expect(reached, `${app.where}: ${variable} names Service ${serviceName} with port ${url.port}`).toBeDefined();
        const target = processes().find((p) => p.workload === reached?.workload);
        expect(target?.env['DEPLOYMENT_LAYER'], `${app.where}: ${variable}`).toBe(layer);
        expect(reached?.containerPort, `${app.where}: ${variable}`).toBe(target?.listenPort);
      }
    }
  });

  it('when network policies apply, then each layer is reachable only from the layer above it, and the edge only from the ingress controller', () => {
    const { policies } = resolved();
    const all = processes();
    for (const to of all) {
      const toLayer = to.env['DEPLOYMENT_LAYER'] as Layer;
      expect(
        policies.some((policy) => labelsMatch(stringMap(field(policy.spec, 'podSelector.matchLabels', policy.name), policy.name), to.workload.labels)),
        `${to.where}: a NetworkPolicy selects it`,
      ).toBe(true);
      const ingress = ingressAllowed(policies, to.workload.labels, to.listenPort, { labels: { 'app.kubernetes.io/name': 'ingress-nginx' }, namespace: INGRESS_NAMESPACE });
      expect(ingress, `${to.where}: reachable from the ingress controller`).toBe(EDGE.includes(toLayer));
      // Any other pod, in another namespace or in this one, would choose its own client address:
      // TRUST_PROXY believes the peer in front (helper 95).
      for (const stranger of [{ labels: { app: 'other' }, namespace: { 'kubernetes.io/metadata.name': 'other' } }, { labels: { app: 'other' } }]) {
        expect(ingressAllowed(policies, to.workload.labels, to.listenPort, stranger), `${to.where}: reachable from ${JSON.stringify(stranger)}`).toBe(false);
      }
      for (const from of all) {
        const fromLayer = from.env['DEPLOYMENT_LAYER'] as Layer;
        const expected = EDGE.includes(toLayer) ? false : SERVICE_TIER.includes(toLayer) ? fromLayer === 'controller' : SERVICE_TIER.includes(fromLayer);
        expect(ingressAllowed(policies, to.workload.labels, to.listenPort, { labels: from.workload.labels }), `${from.name} → ${to.name}`).toBe(expected);
      }
    }
  });

  it('when a process hashes passwords, then it runs no more bcrypt threads than its CPU limit', () => {
    // PASSWORD_HASH_CONCURRENCY's default is availableParallelism(): the node's cores, not the
    // pod's limit, so a 1-CPU pod ran as many hashes at once as the node has cores (helper 95).
    for (const { workload, env, where } of processes()) {
      const holds = holdingsOf(env['DEPLOYMENT_LAYER'] as Layer);
      if (!holds.auth && !holds.users) continue;
      const limit = scalar(field(workload.container, 'resources.limits.cpu', where), where);
      const cores = limit.endsWith('m') ? Number(limit.slice(0, -1)) / 1000 : Number(limit);
      const threads = Number(env['PASSWORD_HASH_CONCURRENCY'] ?? 0);
      expect(threads, `${where}: PASSWORD_HASH_CONCURRENCY`).toBeGreaterThanOrEqual(1);
      expect(threads, `${where}: PASSWORD_HASH_CONCURRENCY against a CPU limit of ${limit}`).toBeLessThanOrEqual(Math.max(1, Math.ceil(cores)));
    }
  });

  it('when scheduled, then every container has resource requests and limits and runs as a non-root user', () => {
    for (const { workload, where } of processes()) {
      for (const path of ['resources.requests.cpu', 'resources.requests.memory', 'resources.limits.cpu', 'resources.limits.memory']) {
        expect(() => field(workload.container, path, where), `${where}: ${path}`).not.toThrow();
      }
      const runAsNonRoot = mapping(workload.container['securityContext'] ?? {}, where)['runAsNonRoot'] ?? mapping(workload.podSpec['securityContext'] ?? {}, where)['runAsNonRoot'];
      expect(runAsNonRoot, `${where}: runAsNonRoot`).toBe(true);
      expect(field(workload.container, 'securityContext.allowPrivilegeEscalation', where), where).toBe(false);
    }
  });

  it('when a container is configured, then src/config.ts reads every variable it is given', () => {
    const { objects } = resolved();
    for (const { env, where } of processes()) expectKnownVariables(Object.keys(env), where);
    for (const object of objects.filter((o) => o.kind === 'ConfigMap' || o.kind === 'Secret')) {
      expectKnownVariables(Object.keys(object.data), `${object.source}: ${object.kind} ${object.name}`);
    }
  });

  it('when the secret placeholders are deployed unchanged, then every process refuses to start', () => {
    for (const { env, where } of processes(false)) {
      expect(() => loadConfig(env), where).toThrow(/JWT_SECRET|INTERNAL_API_SECRET/);
    }
  });
});

describe('deployment files', () => {
  it('when the repository is listed, then every compose file and every overlay is checked here', () => {
    const composeFiles = readdirSync(ROOT).filter((name) => /^docker-compose.*\.ya?ml$/.test(name));
    expect(composeFiles.toSorted()).toEqual(Object.keys(COMPOSE_FILES).toSorted());
    const overlays = readdirSync(join(ROOT, 'k8s', 'overlays')).map((name) => `k8s/overlays/${name}`);
    expect(overlays.toSorted()).toEqual(Object.keys(OVERLAYS).toSorted());
  });

  it('when a layer calls the one below through a Kubernetes Service, then that Service is headless, so that each of its pods gets calls', () => {
    // Found by an attacker (helper 128): behind a cluster IP, kube-proxy picks a pod per TCP
    // connection, and the layer above keeps one HTTP/2 connection: every call went to one replica.
    // Headless, the name resolves to every ready pod, and the caller calls each in turn.
    const problems: string[] = [];
    let called = 0;
    for (const overlay of Object.keys(OVERLAYS)) {
      const documents = readdirSync(join(ROOT, overlay))
        .filter((name) => name.endsWith('.yaml') && name !== 'kustomization.yaml')
        .flatMap((name) => loadAll(readText(`${overlay}/${name}`)) as { kind?: string; metadata?: { name?: string }; spec?: { clusterIP?: string } }[]);
      const urls = documents.map((document) => JSON.stringify(document)).join('\n');
      for (const service of documents.filter((document) => document.kind === 'Service')) {
        const name = service.metadata?.name ?? '';
        if (!new RegExp(`http://${name}:\\d+`).test(urls)) continue;
        called += 1;
        if (service.spec?.clusterIP !== 'None') problems.push(`${overlay}: Service ${name} is called by a layer above but is not headless`);
      }
    }
    expect(called).toBe(5);
    expect(problems).toEqual([]);
  });

  it('when a process is deployed, then nothing binds it to IPv4 alone: HOST is left unset, so it listens on IPv6 as well', () => {
    // Found by an attacker (helper 128): the image and the base ConfigMap set HOST=0.0.0.0, and on a
    // cluster whose pods have IPv6 addresses the probes and Services found nothing listening.
    const files = [
      'docker/Dockerfile',
      ...readdirSync(ROOT).filter((name) => /^docker-compose.*\.ya?ml$/.test(name)),
      ...readdirSync(join(ROOT, 'k8s'), { recursive: true, encoding: 'utf8' })
        .filter((name) => name.endsWith('.yaml'))
        .map((name) => `k8s/${name}`),
    ];
    const pinned = files.filter((file) => /(^|[\s"'-])HOST\s*[=:]\s*["']?0\.0\.0\.0/m.test(readText(file)));
    expect(files.length).toBeGreaterThan(5);
    expect(pinned).toEqual([]);
  });
});
