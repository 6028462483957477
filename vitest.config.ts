import { defineConfig } from 'vitest/config';
import { stat } from 'node:fs/promises';
import { BaseSequencer, type TestSpecification } from 'vitest/node';
import { TOPOLOGY_NAMES, type TopologyName } from './src/topology.ts';

/**
 * The suites that test the product only through its public API (REST and RPC). They run once per
 * deployment topology: the same assertions must hold whether the layers share a process or talk
 * over Connect/HTTP or gRPC. Suites that reach behind the API (into the database client, the job
 * runner or the cache) run in the monolith only.
 */
const API_SUITES = [
  'auth-api',
  'users-api',
  'users-search-api',
  'spec-auth',
  'audit-events-api',
  'system-api',
  'http-edges',
  'rpc-api',
  'rpc-cross-protocol',
  'rpc-health-reflection',
  'rpc-external-clients',
  'grpc-web-text',
  'typed-clients',
  'api-docs',
].map((name) => `tests/integration/${name}.test.ts`);

/**
 * The adversarial suites whose outcome depends on the topology: counters that live in Redis or in
 * the repository process, the client address carried from the controller to the service layer,
 * conditional writes through the repository layer, idempotency keys carried to the service layer
 * and their records kept behind the repository layer, listings admitted by the process that holds
 * the database. They attack every split cell too.
 */
const SECURITY_SUITES = [
  'login-lockout',
  'client-address',
  'password-guessing',
  'password-work',
  'sessions',
  'admin-sessions',
  'admin-writes',
  'idempotency-keys',
  'deadlines',
  'expensive-lists',
  'database-stall',
  'audit-integrity',
].map((name) => `tests/security/${name}.test.ts`);

/**
 * What layered-http (Connect over HTTP between the layers) runs of SECURITY_SUITES: the suites whose
 * outcome hangs on the transport between layers: the client address, the deadline, the
 * Idempotency-Key carried as headers; cancellation of work a caller gave up (password-work); a
 * database failure translated across the boundary (admin-sessions). The rest (admin-writes,
 * sessions, login-lockout, password-guessing) test rules the service and repository code enforce,
 * in the process layout layered-grpc runs them in: the same suites over a second transport took
 * four minutes of CI's workers (admin-writes alone 64 s) when a fresh-clone run stood at 821 s of
 * 900. expensive-lists (a listing's caller carried as a header, the HTTP/2 streams of the public
 * connection) left too, 52 s of workers, when a fresh clone's run took 15 to 17 minutes here: the
 * public connection is the monolith's and layered-grpc's, and the caller header is the same
 * code on both transports.
 */
const TRANSPORT_SECURITY_SUITES = ['client-address', 'deadlines', 'idempotency-keys', 'password-work', 'admin-sessions'].map((name) => `tests/security/${name}.test.ts`);

/**
 * What microservices-grpc runs of SECURITY_SUITES: the suites whose outcome hangs on the service
 * layer being split by domain, which is where this topology differs from layered-grpc. Sessions
 * are ended by user-service and used through auth-service (a logout, a password change, an
 * administrator's end of a user's sessions, a suspension), idempotency keys are claimed by either,
 * the audit log is written by both, and the lockout counters live in Redis, which this cell runs
 * on. The others (a stalling database, listings, conditional writes, hashing under a crowd, the
 * client address, deadlines, guessing) meet the same code behind the same gRPC hops as in
 * layered-grpc. Together those were 400 s of CI's workers on a machine where a fresh clone's run
 * took 15 to 17 minutes, against its 15.
 */
const MICROSERVICES_SECURITY_SUITES = ['sessions', 'admin-sessions', 'idempotency-keys', 'audit-integrity', 'login-lockout'].map((name) => `tests/security/${name}.test.ts`);

/**
 * What layered-grpc runs of SECURITY_SUITES: all but four whose split outcome another cell holds
 * to the same hops. Idempotency keys, an administrator's end of sessions and the audit log
 * crossing a gRPC boundary are microservices-grpc's (gRPC between more processes) and, over
 * Connect/HTTP, layered-http's (keys and ending sessions); conditional admin writes and the last
 * administrator's lock through the repository boundary are the monolith's and MariaDB's suites
 * over the same repository code, and repository-boundary's remote conflicts. Together they were
 * ~105 s of CI's workers in this cell, on fresh-clone runs at 865–869 s of the 900. Sessions
 * (refresh, reuse, lifetime, listing and ending them) cross the same gRPC hops in
 * microservices-grpc, and Connect/HTTP in layered-http: ~49 s more, at a run of 900.8 s.
 */
const LAYERED_GRPC_SECURITY_SUITES = SECURITY_SUITES.filter(
  (suite) => !['admin-writes', 'idempotency-keys', 'admin-sessions', 'audit-integrity', 'sessions'].some((name) => suite.endsWith(`/${name}.test.ts`)),
);

/**
 * The split cells: every split topology of src/topology.ts but microservices over Connect/HTTP,
 * whose two halves each layered-http (the protocol) and microservices-grpc (the process layout)
 * already run; CI has minutes for three split cells, not four. microservices-grpc also runs on
 * Redis (TEST_REDIS_URL, as .ci/run provides), so the cache that then sits in front of the remote
 * repositories in the auth-service and user-service processes is held to the same invalidation
 * tests: a suspension or logout through one process must be seen at once by the other.
 */
const NOT_IN_CI: readonly TopologyName[] = ['monolithic', 'microservices-http'];
const SPLIT_TOPOLOGIES = TOPOLOGY_NAMES.filter((name) => !NOT_IN_CI.includes(name)).map((name) => {
  const env: Record<string, string> = {};
  if (name === 'microservices-grpc') env.TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
  return { name, env };
});

/**
 * The REST API suites (parallel registrations and refreshes of one token among them), and the
 * security suites whose outcome hangs on the database's concurrency semantics, on MariaDB/MySQL:
 * InnoDB's REPEATABLE READ, gap locks and no UPDATE … RETURNING are not PostgreSQL's READ
 * COMMITTED. Those are the lockout reservations and their audit trail, session rotation and
 * revocation, the last-admin lock and the conditional admin writes, and idempotency claims; and
 * password-guessing, whose logins by look-alike names meet utf8mb4_unicode_ci, which folds
 * accents, trailing spaces and fullwidth letters. Left out: password-work and client-address,
 * which test the hashing gate, the counters and the client address, none of them in the database. Monolithic only: the split cells put the same repository code behind a network hop,
 * which the PostgreSQL cells cover, and CI has minutes for one more cell, not four.
 * TEST_MARIADB_URL names the server; every test app gets a database of its own on it.
 */
const MARIADB_URL = process.env.TEST_MARIADB_URL ?? 'mysql://root@127.0.0.1:3306/mysql';
/**
 * The API suites whose requests reach the database differently: the REST ones, every endpoint.
 * The protocol edges (rpc-api, rpc-cross-protocol, rpc-health-reflection, rpc-external-clients,
 * typed-clients, api-docs, http-edges) call the same use cases with the same queries, and run on
 * PostgreSQL in every topology; on MariaDB they were 45 s of CI's workers.
 */
const MARIADB_API_SUITES = ['auth-api', 'users-api', 'users-search-api', 'spec-auth', 'audit-events-api', 'system-api'].map((name) => `tests/integration/${name}.test.ts`);
const MARIADB_SECURITY_SUITES = ['login-lockout', 'password-guessing', 'sessions', 'admin-sessions', 'admin-writes', 'idempotency-keys', 'database-stall', 'audit-integrity'].map(
  (name) => `tests/security/${name}.test.ts`,
);
/**
 * And two that reach behind the API, for the repository code that has a MySQL form of its own:
 * the session purge and the revocations (audit-jobs), and the errors at the repository boundary.
 */
const MARIADB_REPOSITORY_SUITES = ['audit-jobs', 'cache-races', 'repository-boundary', 'repeated-writes', 'user-listing'].map((name) => `tests/integration/${name}.test.ts`);

/**
 * About how long each slow file takes in CI (seconds on the 2-core machine with the whole run
 * going), by project (`*`: every project it runs in). Only for ordering: see LongestFirst.
 */
const SLOW_FILES: Record<string, Record<string, number>> = {
  'security/password-work': { monolithic: 58, '*': 20 },
  'security/connections': { '*': 45 },
  'integration/console-browser': { '*': 50 },
  'integration/rpc-api': { '*': 30 },
  'integration/migrations': { '*': 29 },
  'integration/rpc-external-clients': { monolithic: 25, '*': 15 },
  'integration/server-process': { '*': 22 },
  'integration/pglite-smoke': { '*': 21 },
  'security/sessions': { '*': 18 },
  'integration/topology-processes': { '*': 18 },
  'security/login-lockout': { monolithic: 16, mariadb: 16, '*': 10 },
  'security/admin-writes': { '*': 14 },
  'integration/redis-shared-state': { '*': 14 },
  'integration/typed-clients': { monolithic: 12, '*': 3 },
  'security/schema-fuzz': { '*': 12 },
  'integration/tracing': { '*': 11 },
  'integration/python-client': { '*': 10 },
  'security/password-guessing': { '*': 8 },
  'integration/rpc-cross-protocol': { '*': 8 },
  'integration/api-docs-browser': { '*': 8 },
  'integration/audit-jobs': { '*': 8 },
  'security/idempotency-keys': { '*': 7 },
};

/**
 * Runs the longest files first. Vitest's own order runs the projects one after another and,
 * without the results of an earlier run (as on CI's fresh clone), each project's files largest
 * first; a slow file that is short in bytes (password-work, the process-spawning suites of the
 * monolithic project, the last by name) then starts in the last minute of the run and holds it
 * open while the other workers are idle. Here the monolithic project, which has every slow
 * file of that kind, runs first, then the others by name; within each project the heaviest file
 * first, by its last run's duration when Vitest's cache has one, else by SLOW_FILES, else by its
 * size (10 kB as 1 s, at most 5 s). Keeping a project's files together also lets a worker go on
 * to its project's next file in the same process (isolate: false; Vitest reuses a worker only
 * for a file of the same project).
 */
const projectOrder = (a: TestSpecification, b: TestSpecification) =>
  Number(b.project.name === 'monolithic') - Number(a.project.name === 'monolithic') || a.project.name.localeCompare(b.project.name);

class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const bySize = await super.sort(files);
    const weights = new Map<TestSpecification, number>();
    for (const spec of bySize) weights.set(spec, await this.#weigh(spec));
    return bySize
      .map((spec, index) => ({ spec, index }))
      .sort((a, b) => projectOrder(a.spec, b.spec) || (weights.get(b.spec) ?? 0) - (weights.get(a.spec) ?? 0) || a.index - b.index)
      .map(({ spec }) => spec);
  }

  async #weigh(spec: TestSpecification): Promise<number> {
    const cached = this.ctx.cache.getTestSpecificationResult(spec)?.duration;
    if (cached !== undefined) return cached / 1000;
    const name = /tests\/(.+)\.test\.ts$/.exec(spec.moduleId)?.[1] ?? '';
    const known = SLOW_FILES[name];
    if (known !== undefined) return known[spec.project.name] ?? known['*'] ?? 0;
    const { size } = await stat(spec.moduleId).catch(() => ({ size: 0 }));
    return Math.min(size / 10_000, 5);
  }
}

export default defineConfig({
  test: {
    // Each file gets its own PostgreSQL schema, so files can run in parallel safely.
    pool: 'forks',
    // Vitest's default is one worker fewer than the cores: one worker on the 2-core CI machine.
    // Most test time is spent waiting on sockets, timers, bcrypt in the thread pool and the
    // database: with two workers the whole run used 1.6 cores on average (CPU time over wall
    // time, 14 min on a fresh clone); a third keeps both cores busy. (A fourth was tried on a
    // sandboxed machine where a fresh clone took 14 min 57 s: 15 min 44 s, every file slower.)
    maxWorkers: 3,
    testTimeout: 30_000,
    sequence: { sequencer: LongestFirst },
    hookTimeout: 60_000,
    // Not isolated: a worker runs file after file of one project in one process, loading the
    // application's modules (and Prisma's WebAssembly schema engine) once rather than once per
    // file. The application keeps no process-wide state (several apps per process is how the
    // split topologies are tested), and every file closes the apps, servers, browsers and
    // processes it starts in afterAll. About a quarter of the CPU time of every project: the
    // monolithic project used 134 s instead of 187 s, mariadb 48 s instead of 66 s, all tests
    // passing either way.
    isolate: false,
    projects: [
      { extends: true, test: { name: 'monolithic', include: ['tests/**/*.test.ts'] } },
      ...SPLIT_TOPOLOGIES.map((topology) => ({
        extends: true as const,
        test: {
          name: topology.name,
          include: [
            ...API_SUITES,
            ...(topology.name === 'layered-http'
              ? TRANSPORT_SECURITY_SUITES
              : topology.name === 'microservices-grpc'
                ? MICROSERVICES_SECURITY_SUITES
                : topology.name === 'layered-grpc'
                  ? LAYERED_GRPC_SECURITY_SUITES
                  : SECURITY_SUITES),
          ],
          env: { TEST_TOPOLOGY: topology.name, ...topology.env },
        },
      })),
      {
        extends: true,
        test: {
          name: 'mariadb',
          include: [...MARIADB_API_SUITES, ...MARIADB_SECURITY_SUITES, ...MARIADB_REPOSITORY_SUITES],
          env: { TEST_TOPOLOGY: 'monolithic', TEST_DATABASE_URL: MARIADB_URL },
        },
      },
    ],
  },
});
