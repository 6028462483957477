import { pino, type DestinationStream, type Logger } from 'pino';
import { currentCallContext, detachedFromRequest } from './call-context.ts';

export type { Logger };

/**
 * Structured JSON logs. Credentials are redacted wherever they might be logged by accident.
 * `destination` defaults to stdout; tests pass one to read what was logged. `mixin` adds fields
 * to every line.
 */
export function createLogger(options: { level: string; name?: string; destination?: DestinationStream; mixin?: (() => object) | undefined }): Logger {
  const settings = {
    level: options.level,
    name: options.name ?? 'arcana-cloud',
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', '*.password', '*.passwordHash', '*.oldPassword', '*.newPassword', '*.refreshToken', '*.accessToken'],
      censor: '[redacted]',
    },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    // Fields every line gets: the id of the request it is logged for, and the current trace id
    // when tracing is on; a line's own win. Without the request id, a line logged deep in a
    // request (an internal call's retry, a failed cache invalidation) could not be tied to the
    // request it served: an outage's hundreds of retry warnings named none (helper 158).
    mixin: withRequestId(options.mixin),
  } satisfies pino.LoggerOptions;
  return options.destination === undefined ? pino(settings) : pino(settings, options.destination);
}

/** The mixin's fields, a new object each time: pino merges the line's own fields into it. */
function withRequestId(mixin: (() => object) | undefined): () => object {
  return () => {
    const requestId = currentCallContext()?.requestId;
    if (requestId === undefined) return mixin?.() ?? {};
    return mixin === undefined ? { requestId } : { requestId, ...mixin() };
  };
}

/**
 * A warning that is logged at most once per `intervalMs`, however often its cause recurs (an
 * attacker's refusals, a collector refusing every export); the occurrences in between are
 * counted in the next line. That line belongs to no request: its timer is armed outside the one
 * that happened to log first, which timers would otherwise inherit, id and all (helper 160).
 */
export function rateLimitedWarning(logger: Logger | undefined, message: string, intervalMs: number): (fields: Record<string, unknown>) => void {
  let suppressed = 0;
  let window: NodeJS.Timeout | undefined;
  const endWindow = () => {
    window = undefined;
    if (suppressed === 0) return;
    logger?.warn({ refused: suppressed, intervalMs }, `${message} (more in the last interval)`);
    suppressed = 0;
    window = detachedFromRequest(() => setTimeout(endWindow, intervalMs).unref());
  };
  return (fields) => {
    if (window !== undefined) {
      suppressed += 1;
      return;
    }
    logger?.warn(fields, message);
    window = detachedFromRequest(() => setTimeout(endWindow, intervalMs).unref());
  };
}
