// The job runner on BullMQ: audit events and the session purge go through queues in Redis, so that
// several processes share them and the purge runs once per interval for all of them.
import type * as BullMq from 'bullmq';
import type { Job, Queue, Worker } from 'bullmq';
import type * as IoRedis from 'ioredis';
import type { Redis } from 'ioredis';
import { UnavailableError } from '../domain/errors.ts';
import { detachedFromRequest } from '../infrastructure/call-context.ts';
import { rateLimitedWarning } from '../infrastructure/logger.ts';
import { dropUnlessReady } from '../infrastructure/redis/redis-client.ts';
import type { NewAuditEvent } from '../repositories/audit-repository.ts';
import { toNewAuditEvent, type AuditEventInput, type AuditLog } from '../services/audit-use-cases.ts';
import { AUDIT_QUEUE, errorText, MAINTENANCE_QUEUE, PURGE_SESSIONS, withWriteAt, type JobRunner, type RunnerContext } from './jobs.ts';

/** Waits before an audit event is tried again while the database is out of reach: its age, 1 s to 30 s. */
const UNAVAILABLE_RETRY_MIN_MS = 1_000;
const UNAVAILABLE_RETRY_MAX_MS = 30_000;
/** At most one line per this many ms says that audit writes are failing, with how many did. */
const AUDIT_FAILURE_LOG_INTERVAL_MS = 60_000;

/** How long start-up waits for Redis before going on without it. */
const REDIS_STARTUP_TIMEOUT_MS = 5_000;
/** A producer command that takes longer than this is abandoned and the event written directly. */
const REDIS_COMMAND_TIMEOUT_MS = 5_000;
/**
 * A worker connection that receives nothing for this long while a command waits is taken for
 * dead and replaced: longer than the longest blocking wait BullMQ sends (10 s) and its own
 * watchdog's second. Without it, a connection that went dead mid-command (a failover, a lost NAT
 * entry) held that command, and the worker, for as long as the kernel kept the socket.
 */
const WORKER_SOCKET_TIMEOUT_MS = 20_000;
/** How long close() lets workers finish their jobs, should Redis go away while they do. */
const WORKER_CLOSE_TIMEOUT_MS = 10_000;
/** Repeated Redis errors are logged at most this often, so an outage does not flood the logs. */
const ERROR_LOG_INTERVAL_MS = 60_000;

/** An audit event as a BullMQ job carries it: JSON, so the time travels as an ISO string. */
type AuditJobData = Omit<NewAuditEvent, 'createdAt'> & { createdAt: string };

const toJobData = (event: NewAuditEvent): AuditJobData => ({ ...event, createdAt: event.createdAt.toISOString() });
const fromJobData = (data: AuditJobData): NewAuditEvent => ({ ...data, createdAt: new Date(data.createdAt) });

/** The BullMQ side of a runner, built once Redis has been reachable. */
interface BullMqParts {
  auditQueue: Queue<AuditJobData>;
  maintenanceQueue: Queue;
  workers: Worker[];
  workerConnections: Redis[];
}

/**
 * BullMQ on Redis. BullMQ wants separate connections for producing and for each worker (workers
 * block on theirs), and worker connections must retry forever (`maxRetriesPerRequest: null`).
 * The producer connection instead fails fast while Redis is away, and the event is then written
 * to the database directly: a late audit row beats a lost one.
 *
 * Queues and workers are only created once Redis has answered. BullMQ objects closed before their
 * connection was ever ready reject an internal promise with nobody listening (an unhandled
 * rejection), and their close() can wait for a connection that never comes.
 */
export class BullMqJobRunner implements JobRunner {
  readonly audit: AuditLog;
  readonly #context: RunnerContext;
  readonly #redis: { url: string; prefix: string };
  readonly #purgeIntervalMs: number;
  readonly #producer: Redis;
  readonly #bullmq: typeof BullMq;
  readonly #ioredis: typeof IoRedis;
  readonly #inFlight = new Set<Promise<void>>();
  #parts: BullMqParts | undefined;
  #closed = false;
  #warnedDirect = false;
  /** Say, at most once a minute each, that audit events wait for the database, or are retried. */
  readonly #auditWaiting: (fields: Record<string, unknown>) => void;
  readonly #auditRetrying: (fields: Record<string, unknown>) => void;
  #redeclare: NodeJS.Timeout | undefined;

  static async start(context: RunnerContext, redis: { url: string; prefix: string }, purgeIntervalMs: number): Promise<BullMqJobRunner> {
    // Imported here, not with the module: a process without Redis never loads them (BullMQ alone
    // is some 190 modules).
    const [bullmq, ioredis] = await Promise.all([import('bullmq'), import('ioredis')]);
    const runner = new BullMqJobRunner(context, redis, purgeIntervalMs, bullmq, ioredis);
    if (await waitForReady(runner.#producer, REDIS_STARTUP_TIMEOUT_MS)) {
      await runner.#onReady();
    } else {
      context.logger.warn('redis unreachable at start-up; audit events are written directly and sessions are not purged until it is back');
    }
    // On every later connection: the first one builds the queues if start-up had to go without
    // them, and each one declares the purge schedule again, so that it comes back should Redis
    // have lost its data. Declaring it again is harmless (BullMQ keeps the pending run's time).
    runner.#producer.on('ready', runner.#onReconnect);
    // And once an interval while connected: a Redis that lost its data without dropping the
    // connection (FLUSHALL, a restore, the prefix deleted) took the schedule with it, and nothing
    // declared it again until every process had reconnected: no purge ran (helper 125).
    runner.#redeclare = setInterval(() => {
      if (runner.#producer.status === 'ready') runner.#onReconnect();
    }, purgeIntervalMs).unref();
    return runner;
  }

  private constructor(context: RunnerContext, redis: { url: string; prefix: string }, purgeIntervalMs: number, bullmq: typeof BullMq, ioredis: typeof IoRedis) {
    this.#bullmq = bullmq;
    this.#ioredis = ioredis;
    this.#context = context;
    this.#redis = redis;
    this.#purgeIntervalMs = purgeIntervalMs;
    this.#auditWaiting = rateLimitedWarning(context.logger, 'audit events wait for the database; will retry', AUDIT_FAILURE_LOG_INTERVAL_MS);
    this.#auditRetrying = rateLimitedWarning(context.logger, 'audit event write failed; will retry', AUDIT_FAILURE_LOG_INTERVAL_MS);
    this.audit = { record: (event) => this.#record(event), withWrite: withWriteAt(context.now) };
    this.#producer = this.#connect('jobs-producer', {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
      // A dead connection is replaced, not kept to time out every later command in turn.
      socketTimeout: REDIS_COMMAND_TIMEOUT_MS,
    });
  }

  runPurgeNow(): Promise<number> {
    return this.#context.purge();
  }

  async queueDepth(): Promise<{ queue: string; state: string; count: number }[]> {
    const parts = this.#parts;
    if (parts === undefined || this.#producer.status !== 'ready') return [];
    const states = ['waiting', 'active', 'delayed', 'failed'] as const;
    const depths = await Promise.all(
      [parts.auditQueue, parts.maintenanceQueue].map(async (queue) => {
        const counts = await queue.getJobCounts(...states);
        return states.map((state) => ({ queue: queue.name, state, count: counts[state] ?? 0 }));
      }),
    );
    return depths.flat();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#redeclare);
    this.#producer.off('ready', this.#onReconnect);
    await Promise.allSettled(this.#inFlight);
    const parts = this.#parts;
    const connections = [this.#producer, ...(parts?.workerConnections ?? [])];
    const redisDown = connections.some((connection) => connection.status !== 'ready');
    // Connections that are down are dropped while BullMQ still listens to them, so that what it
    // was waiting for fails into its error listeners rather than into nothing.
    await Promise.all(connections.filter((connection) => connection.status !== 'ready').map(disconnected));
    if (parts !== undefined) {
      // Workers first. A graceful close() waits for the jobs they are running, but while Redis is
      // down it never returns (BullMQ issue #4656), so then it is forced: those jobs could not
      // record their outcome anyway, and Redis hands them to another worker once they stall.
      // Waiting jobs stay in Redis for the other processes, or for this one after a restart.
      const closing = Promise.allSettled(parts.workers.map((worker) => worker.close(redisDown)));
      if (!(await settlesWithin(closing, WORKER_CLOSE_TIMEOUT_MS))) {
        this.#context.logger.warn('background workers did not stop in time; closing anyway');
        // Their connections are left to them until they stop. Closed under a job that is
        // recording its outcome, a closing worker retries that record at once, for ever, at a
        // whole core (BullMQ's retryIfFailed waits between tries only while not closing): a test
        // process spun so for twenty minutes in CI, and starved every test beside it.
        const left = new Set<Redis>(parts.workerConnections);
        void closing.then(() => Promise.allSettled([...left].filter((connection) => connection.status === 'ready').map((connection) => connection.quit())));
        await Promise.allSettled([parts.auditQueue.close(), parts.maintenanceQueue.close()]);
        await Promise.allSettled(connections.filter((connection) => connection.status === 'ready' && !left.has(connection)).map((connection) => connection.quit()));
        return;
      }
      await Promise.allSettled([parts.auditQueue.close(), parts.maintenanceQueue.close()]);
    }
    // BullMQ leaves connections it was given as instances to their owner to close.
    await Promise.allSettled(connections.filter((connection) => connection.status === 'ready').map((connection) => connection.quit()));
  }

  /** The 'ready' listener: ioredis ignores what a listener returns, and #onReady logs its own failures. */
  readonly #onReconnect = (): void => {
    void this.#onReady();
  };

  async #onReady(): Promise<void> {
    try {
      this.#parts ??= this.#build();
      // One purge at a time across every process on this Redis: BullMQ puts the schedule's next
      // run in line as soon as one starts, and another process's free worker took it while the
      // first still ran, so a purge that outlasted its interval ran up to once per process at
      // once over the same rows (helper 125). Kept in Redis, so declared again with the schedule.
      await this.#parts.maintenanceQueue.setGlobalConcurrency(1);
      // Every process declares the same scheduler id: BullMQ keeps one schedule and one pending
      // job per slot for all of them, so the purge runs once per interval, not once per process.
      await this.#parts.maintenanceQueue.upsertJobScheduler(
        PURGE_SESSIONS,
        { every: this.#purgeIntervalMs },
        { name: PURGE_SESSIONS, opts: { removeOnComplete: true, removeOnFail: 100 } },
      );
    } catch (error) {
      this.#context.logger.error({ err: errorText(error) }, 'could not schedule the session purge');
    }
  }

  #build(): BullMqParts {
    const { logger, audit, purge } = this.#context;
    const prefix = this.#redis.prefix;
    const { Queue, Worker } = this.#bullmq;
    const auditQueue = new Queue<AuditJobData>(AUDIT_QUEUE, {
      connection: this.#producer,
      prefix,
      defaultJobOptions: {
        attempts: 10,
        // 1 s, 2 s, 4 s … about 8.5 minutes in all: enough to ride out a database restart.
        backoff: { type: 'exponential', delay: 1_000 },
        removeOnComplete: true,
        // Events that still could not be written stay a week, to be inspected and retried.
        removeOnFail: { age: 7 * 24 * 3600 },
      },
    });
    const maintenanceQueue = new Queue(MAINTENANCE_QUEUE, { connection: this.#producer, prefix });

    const auditConnection = this.#connect('jobs-audit-worker', { maxRetriesPerRequest: null, socketTimeout: WORKER_SOCKET_TIMEOUT_MS });
    const { DelayedError } = this.#bullmq;
    const auditWorker = new Worker<AuditJobData>(
      AUDIT_QUEUE,
      async (job, token) => {
        try {
          await audit.createMany([fromJobData(job.data)]);
        } catch (error) {
          if (!(error instanceof UnavailableError) || token === undefined) throw error;
          // The database is out of reach (down, restarting, stalled past its lock timeout): the
          // event waits and is tried again, later and later, for as long as that lasts, as the
          // in-process runner's do. Counted against the attempts, an outage of more than the ten
          // attempts' 8.5 minutes left every event of it in the failed set, never written
          // (helper 140). The attempts are for a write the database refused.
          const waitMs = Math.min(Math.max(Date.now() - job.timestamp, UNAVAILABLE_RETRY_MIN_MS), UNAVAILABLE_RETRY_MAX_MS);
          this.#context.jobFailed(AUDIT_QUEUE);
          this.#auditWaiting({ err: errorText(error), retryInMs: waitMs });
          await job.moveToDelayed(Date.now() + waitMs, token);
          throw new DelayedError();
        }
      },
      { connection: auditConnection, prefix, concurrency: 4 },
    );
    auditWorker.on('failed', (job, error) => this.#auditFailed(job, error));

    const maintenanceConnection = this.#connect('jobs-maintenance-worker', { maxRetriesPerRequest: null, socketTimeout: WORKER_SOCKET_TIMEOUT_MS });
    const maintenanceWorker = new Worker(MAINTENANCE_QUEUE, async (job) => (job.name === PURGE_SESSIONS ? purge() : undefined), {
      connection: maintenanceConnection,
      prefix,
      concurrency: 1,
    });
    maintenanceWorker.on('failed', (job, error) => {
      this.#context.jobFailed(MAINTENANCE_QUEUE);
      logger.error({ err: error.message, job: job?.name }, 'maintenance job failed');
    });

    // BullMQ objects are EventEmitters: an 'error' without a listener would crash the process.
    auditQueue.on('error', this.#throttledErrorLog('audit queue'));
    maintenanceQueue.on('error', this.#throttledErrorLog('maintenance queue'));
    auditWorker.on('error', this.#throttledErrorLog('audit worker'));
    maintenanceWorker.on('error', this.#throttledErrorLog('maintenance worker'));
    return { auditQueue, maintenanceQueue, workers: [auditWorker, maintenanceWorker], workerConnections: [auditConnection, maintenanceConnection] };
  }

  #record(input: AuditEventInput): void {
    let event: NewAuditEvent;
    try {
      event = toNewAuditEvent(input, this.#context.now());
    } catch (error) {
      this.#context.logger.error({ err: errorText(error), event: input }, 'could not record audit event');
      return;
    }
    // Outside the request, as the in-process runner drains: the request may have answered, and
    // its deadline passed, before Redis or the database does. Carrying it, a direct write after a
    // queue that did not answer was cut off at that deadline (written or not) and logged as lost
    // (helper 100).
    const task = detachedFromRequest(() => this.#enqueue(event)).finally(() => this.#inFlight.delete(task));
    this.#inFlight.add(task);
  }

  async #enqueue(event: NewAuditEvent): Promise<void> {
    const queue = this.#parts?.auditQueue;
    if (!this.#closed && queue !== undefined && this.#producer.status === 'ready') {
      try {
        await queue.add('record', toJobData(event));
        this.#warnedDirect = false;
        return;
      } catch (error) {
        this.#warnDirect(error);
      }
    } else {
      this.#warnDirect(this.#closed ? 'job runner closed' : `redis connection ${this.#producer.status}`);
    }
    try {
      await this.#context.audit.createMany([event]);
    } catch (error) {
      this.#context.jobFailed(AUDIT_QUEUE);
      this.#context.logger.error({ err: errorText(error), event }, 'could not write audit event');
    }
  }

  #warnDirect(reason: unknown): void {
    // One warning per outage: every event of the outage takes the same way.
    if (this.#warnedDirect) return;
    this.#warnedDirect = true;
    this.#context.logger.warn({ err: errorText(reason) }, 'cannot queue audit events; writing them directly');
  }

  #auditFailed(job: Job<AuditJobData> | undefined, error: Error): void {
    this.#context.jobFailed(AUDIT_QUEUE);
    const final = job !== undefined && job.attemptsMade >= (job.opts.attempts ?? 1);
    if (final) {
      this.#context.logger.error({ err: error.message, event: job.data, jobId: job.id }, 'audit event not written after all retries; kept in the failed set');
    } else {
      // At most a line a minute: one per attempt of every event made ten lines of each audited
      // request while the writes failed (helper 140).
      this.#auditRetrying({ err: error.message, jobId: job?.id, attempt: job?.attemptsMade });
    }
  }

  #connect(name: string, options: { enableOfflineQueue?: boolean; maxRetriesPerRequest: number | null; commandTimeout?: number; socketTimeout: number }): Redis {
    const connection = new this.#ioredis.Redis(this.#redis.url, { connectionName: name, ...options });
    // Without a listener ioredis prints every failed reconnection to stderr.
    connection.on('error', this.#throttledErrorLog(`redis ${name}`));
    dropUnlessReady(connection, () => this.#context.logger.warn({ source: `redis ${name}` }, 'redis connection did not get ready; reconnecting'));
    return connection;
  }

  #throttledErrorLog(source: string): (error: Error) => void {
    let last = 0;
    return (error) => {
      if (Date.now() - last < ERROR_LOG_INTERVAL_MS) return;
      last = Date.now();
      this.#context.logger.warn({ err: error.message, source }, 'background job infrastructure error');
    };
  }
}

/** Resolves true once the connection is ready, false on its first error or after `timeoutMs`. */
function waitForReady(connection: Redis, timeoutMs: number): Promise<boolean> {
  if (connection.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const finish = (ready: boolean) => {
      clearTimeout(timer);
      connection.off('ready', onReady);
      connection.off('error', onError);
      resolve(ready);
    };
    const onReady = () => finish(true);
    const onError = () => finish(false);
    const timer = setTimeout(() => finish(false), timeoutMs);
    connection.once('ready', onReady);
    connection.once('error', onError);
  });
}

/** Drops a connection and resolves once everything waiting on it has been told (or after a second). */
function disconnected(connection: Redis): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 1_000);
    // Listeners of 'end' settle their promises in microtasks; setImmediate runs after those.
    const settled = () => {
      clearTimeout(timer);
      setImmediate(resolve);
    };
    if (connection.status === 'end') return settled();
    if (connection.status === 'reconnecting') {
      // Between attempts there is no socket: ioredis only cancels the next attempt and never
      // emits 'end', and nothing waiting on the connection is settled.
      connection.disconnect();
      return settled();
    }
    connection.once('end', settled);
    connection.disconnect();
  });
}

/** Whether `promise` settles within `timeoutMs`. */
async function settlesWithin(promise: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
