import { defineConfig } from 'vitest/config';

/**
 * The suites that test the product only through its public API (REST and RPC). They run once per
 * deployment topology: the same assertions must hold whether the layers share a process or talk
 * over Connect/HTTP or gRPC. Suites that reach behind the API (into the database client, the job
 * runner or the cache) run in the monolith only.
 */
const API_SUITES = [
  'auth-api',
  'users-api',
  'spec-auth',
  'audit-events-api',
  'system-api',
  'http-edges',
  'rpc-api',
  'rpc-cross-protocol',
  'rpc-health-reflection',
  'rpc-external-clients',
  'typed-clients',
].map((name) => `tests/integration/${name}.test.ts`);

const SPLIT_TOPOLOGIES = ['layered-http', 'layered-grpc', 'microservices-grpc'];

export default defineConfig({
  test: {
    // Each file gets its own PostgreSQL schema, so files can run in parallel safely.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 60_000,
    projects: [
      { extends: true, test: { name: 'monolithic', include: ['tests/**/*.test.ts'] } },
      ...SPLIT_TOPOLOGIES.map((topology) => ({
        extends: true as const,
        test: { name: topology, include: API_SUITES, env: { TEST_TOPOLOGY: topology } },
      })),
    ],
  },
});
