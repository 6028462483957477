// The process: configuration, logging, the HTTP server and graceful shutdown. Started by src/main.js.
import { createApplication } from './app.ts';
import { ConfigError, loadConfig } from './config.ts';
import { createLogger, flushUnmeteredLines } from './infrastructure/logger.ts';
import { serveMetrics } from './infrastructure/metrics.ts';
import { traceLogFields } from './infrastructure/tracing.ts';
import { createDualProtocolServer } from './server.ts';
import { uninterruptedSettled } from './infrastructure/call-context.ts';
import { gatedWorkInFlight } from './infrastructure/work-gate.ts';
import { releaseMemoryWhenIdle } from './infrastructure/idle-memory.ts';

/**
 * When, as a share of SHUTDOWN_TIMEOUT_MS, the drain stops waiting and closes what is still open;
 * the rest of the timeout is for closing the database, the queues and the exporters.
 */
const CUT_AT_SHARE_OF_TIMEOUT = 0.8;
/** Until when (as a share of SHUTDOWN_TIMEOUT_MS) writes under way may finish before the database closes. */
const KEEP_FOR_CLOSING_SHARE = 0.9;
/** How long no write may have run before the database is closed: what a cut request starts, it starts within this. */
const SETTLE_QUIET_MS = 100;

/** `work`'s result; a ConfigError it throws stops the process with its message alone, no stack. */
async function orExitOnConfigError<T>(work: () => T | Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

async function main(): Promise<void> {
  const config = await orExitOnConfigError(() => loadConfig(process.env));
  // With tracing on, every line logged on behalf of a traced request carries its trace id.
  const logger = createLogger({ level: config.logLevel, mixin: config.tracing === undefined ? undefined : traceLogFields });
  if (config.jwt.usingDevelopmentSecret) {
    logger.warn('JWT_SECRET is not set: using the built-in development secret. Never do this in production.');
  }

  if (config.deployment.mode !== 'monolithic' && config.deployment.internalSecret === undefined) {
    logger.warn('INTERNAL_API_SECRET is not set: internal APIs accept calls from anyone who can reach them. Never do this in production.');
  }
  // Also during start-up: the bootstrap administrator's variables are checked when it is created.
  const app = await orExitOnConfigError(() => createApplication(config, logger));
  const { server, close, closeNow } = createDualProtocolServer(
    { http1: app.http, http2: app.http2 },
    {
      limits: config.server.connections,
      trustProxy: config.server.trustProxy,
      logger,
      bodyLimitBytes: config.server.bodyLimitBytes,
      vouch: app.vouch,
      browserOrigins: app.browserOrigins,
      drainIdleGraceMs: config.server.shutdownIdleGraceMs,
    },
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: config.server.port, ...(config.server.host === undefined ? {} : { host: config.server.host }) }, resolve);
  });
  const address = server.address();
  logger.info(
    {
      address: typeof address === 'object' && address !== null ? `${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}` : address,
      database: app.database?.kind,
      deploymentMode: config.deployment.mode,
      deploymentLayer: config.deployment.layer,
      protocol: config.deployment.protocol,
      nodeEnv: config.nodeEnv,
    },
    'arcana-cloud listening',
  );

  // Prometheus metrics on their own port, never on the public one.
  const metricsServer = app.metrics === undefined ? undefined : await serveMetrics(app.metrics, config.metrics.port, config.metrics.host);
  if (metricsServer !== undefined) logger.info({ port: metricsServer.port }, 'metrics served at /metrics');

  // Memory a burst took is given back once the process is idle (infrastructure/idle-memory.ts).
  const stopReleasing = config.server.idleHeapReleaseMb === 0 ? undefined : releaseMemoryWhenIdle({ growthBytes: config.server.idleHeapReleaseMb * 2 ** 20 }, logger);

  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    stopReleasing?.();
    logger.info({ signal }, 'shutting down: draining in-flight requests');
    const signalledAt = Date.now();
    const force = setTimeout(() => {
      logger.error('shutdown timed out; exiting');
      process.exit(1);
    }, config.server.shutdownTimeoutMs);
    force.unref();
    // What is still open near the end of the grace period cannot finish in it (a stream whose
    // client stopped reading, say): it is cut, so that the rest of the shutdown runs and the
    // process exits 0, rather than being killed mid-way at the timeout.
    const cutInMs = Math.floor(config.server.shutdownTimeoutMs * CUT_AT_SHARE_OF_TIMEOUT);
    const cut = setTimeout(() => {
      const open = closeNow();
      if (open > 0) logger.warn({ connections: open }, 'shutdown: closed connections still open near the shutdown timeout');
    }, cutInMs);
    cut.unref();
    // Health watches never end by themselves; the drain would wait for them until forced. Queued
    // password hashes that the cut would end are refused now, while there is time to clean up.
    app.drain(signalledAt + cutInMs);
    void close()
      .then(async () => {
        clearTimeout(cut);
        // Writes past a use case's point of no return finish before the database closes, even for
        // requests whose connections were cut (their clients are gone, the writes are not), within
        // what is left of the timeout but the part kept for closing.
        const left = signalledAt + config.server.shutdownTimeoutMs * KEEP_FOR_CLOSING_SHARE - Date.now();
        // A password hash under way is followed by the writes it was for (an account, a session).
        if (!(await uninterruptedSettled({ quietMs: SETTLE_QUIET_MS, withinMs: Math.max(0, left), busy: () => gatedWorkInFlight() > 0 }))) {
          logger.warn('shutdown: writes, password hashes or listings still running when the database had to be closed');
        }
        await metricsServer?.close();
        await app.close();
        flushUnmeteredLines();
        logger.info('shutdown complete');
        process.exit(0);
      })
      .catch((error: unknown) => {
        // A part that failed to close: said so, not an unhandled rejection's stack on stderr.
        logger.error({ err: error instanceof Error ? error.message : String(error) }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((error: unknown) => {
  process.stderr.write(`Failed to start: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
