// The audit writers while the database is out of reach for a long time, and what that costs in
// the log: the job runners built as the composition root builds them, over an audit table in
// memory that refuses every write as a database out of reach does (UnavailableError) until the
// test brings it back, and, for the BullMQ runner, the real Redis. Found by an attacking helper
// (140):
// - BullMQ: an outage longer than the ten attempts' 8.5 minutes left every event of it in the
//   failed set, never written; each attempt of each event was a log line (ten per request).
// - In-process: with the backlog full, each further event was an error line of its own carrying
//   the client's agent (the log grew at twice the request rate), and no metric counted it; at
//   shutdown the unwritten backlog was one 7.4 MB line, which log drivers cut at 16 KB.
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../gen/prisma/client.ts';
import { DATABASE_UNAVAILABLE, UnavailableError } from '../../src/domain/errors.ts';
import { AUDIT_QUEUE, createJobRunner, type JobRunner } from '../../src/jobs/job-runner.ts';
import type { AuditRepository, NewAuditEvent } from '../../src/repositories/audit-repository.ts';
import { capturingLogger } from '../helpers/test-app.ts';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = `${process.env.REDIS_KEY_PREFIX ?? ''}test-outages-${process.pid}-${randomBytes(4).toString('hex')}`;

/** The audit table behind a database that can be taken away. */
class FlakyAuditRepository implements AuditRepository {
  down = true;
  readonly rows = new Map<string, NewAuditEvent>();
  createMany(events: NewAuditEvent[]): Promise<number> {
    if (this.down) return Promise.reject(new UnavailableError(DATABASE_UNAVAILABLE));
    let stored = 0;
    for (const event of events) {
      const key = event.eventKey ?? String(Math.random());
      if (this.rows.has(key)) continue;
      this.rows.set(key, event);
      stored += 1;
    }
    return Promise.resolve(stored);
  }
  list(): Promise<{ events: AuditEvent[]; total: number }> {
    return Promise.resolve({ events: [], total: 0 });
  }
  purgeBefore(): Promise<number> {
    return Promise.resolve(0);
  }
}

const runners: JobRunner[] = [];
const queues: Queue[] = [];
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });

afterEach(async () => {
  await Promise.all(queues.splice(0).map((queue) => queue.close()));
  await Promise.all(runners.splice(0).map((runner) => runner.close()));
});

afterAll(async () => {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${PREFIX}*`, 'COUNT', 500);
    cursor = next;
    if (keys.length > 0) await redis.del(...keys);
  } while (cursor !== '0');
  await redis.quit();
});

async function startRunner(audit: AuditRepository, logger: ReturnType<typeof capturingLogger>['logger'], redisPrefix?: string, failed?: string[]): Promise<JobRunner> {
  const runner = await createJobRunner({
    logger,
    auditRepository: audit,
    tokenRepository: { purgeStale: () => Promise.resolve(0) },
    idempotencyRepository: { purgeExpired: () => Promise.resolve(0) },
    purgeIntervalMs: 3_600_000,
    purgeRetentionMs: 86_400_000,
    auditRetentionMs: 0,
    onJobFailed: (queue) => failed?.push(queue),
    ...(redisPrefix === undefined ? {} : { redis: { url: REDIS_URL, prefix: redisPrefix } }),
  });
  runners.push(runner);
  return runner;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => Promise<boolean> | boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await sleep(50);
  }
  return condition();
}

const agent = 'Mozilla/5.0 '.padEnd(500, 'x');

describe('the BullMQ audit writer while the database is down', () => {
  it('when the database is out of reach for longer than the attempts would last, then the events wait without using them up, the log says so a line at a time, and they are written once it is back', async () => {
    const prefix = `${PREFIX}-bull`;
    const logs = capturingLogger('info');
    const audit = new FlakyAuditRepository();
    const failed: string[] = [];
    const runner = await startRunner(audit, logs.logger, prefix, failed);
    const queue = new Queue(AUDIT_QUEUE, { connection: { url: REDIS_URL }, prefix });
    queues.push(queue);
    const events = 20;
    for (let index = 0; index < events; index += 1)
      runner.audit.record({ type: 'LOGIN_FAILED', userId: 424242, ipAddress: '203.0.113.7', userAgent: agent, details: { reason: 'wrong_password', knownDevice: false } });
    // Time passes: each wait is cut short by promoting the delayed jobs, as the clock reaching
    // their time would, until every event has been tried more often than its ten attempts.
    const outlasted = await until(async () => {
      await queue.promoteJobs();
      return failed.length >= events * 12;
    }, 40_000);
    expect(outlasted).toBe(true);
    expect((await queue.getJobCounts('failed')).failed).toBe(0);
    const lines = logs.lines.filter((line) => line.msg.includes('audit event'));
    expect(lines.length).toBeLessThanOrEqual(2);
    audit.down = false;
    const written = await until(async () => {
      await queue.promoteJobs();
      return audit.rows.size === events;
    }, 10_000);
    expect({ written, rows: audit.rows.size }).toEqual({ written: true, rows: events });
  }, 60_000);
});

describe('the in-process audit writer while the database is down', () => {
  it('when the backlog of 10 000 events is full, then further events are dropped with a line per interval, not each, and counted', async () => {
    const logs = capturingLogger('info');
    const audit = new FlakyAuditRepository();
    const failed: string[] = [];
    const runner = await startRunner(audit, logs.logger, undefined, failed);
    for (let index = 0; index < 10_000; index += 1)
      runner.audit.record({ type: 'LOGIN_FAILED', ipAddress: '203.0.113.7', userAgent: agent, details: { reason: 'unknown_user', knownDevice: false } });
    await sleep(50);
    const failedBefore = failed.length;
    for (let index = 0; index < 2_000; index += 1)
      runner.audit.record({ type: 'LOGIN_FAILED', ipAddress: '203.0.113.7', userAgent: agent, details: { reason: 'unknown_user', knownDevice: false } });
    const dropLines = logs.lines.filter((line) => line.msg.includes('dropped'));
    expect({ dropLines: dropLines.length, counted: failed.length - failedBefore }).toEqual({ dropLines: 1, counted: 2_000 });
    expect(JSON.stringify(dropLines[0]).length).toBeLessThan(1_024);
    audit.down = false;
  }, 60_000);

  it('when it closes with a backlog it cannot write, then each event is logged on a line of its own, none of them past what log drivers keep whole', async () => {
    const logs = capturingLogger('info');
    const audit = new FlakyAuditRepository();
    const runner = await startRunner(audit, logs.logger);
    runners.splice(runners.indexOf(runner), 1);
    for (let index = 0; index < 10_000; index += 1)
      runner.audit.record({ type: 'LOGIN_FAILED', ipAddress: '203.0.113.7', userAgent: agent, details: { reason: 'unknown_user', knownDevice: false } });
    await sleep(50);
    await runner.close();
    const longest = Math.max(...logs.lines.map((line) => JSON.stringify(line).length));
    // Docker and containerd split lines at 16 KB (helper 114 cut the request log's path for it).
    expect(longest).toBeLessThan(16 * 1024);
    expect(logs.lines.filter((line) => line.msg === 'audit event not written')).toHaveLength(10_000);
  }, 60_000);
});
