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

/** Lines of unmetered requests logged in full per UNMETERED_INTERVAL_MS, per process (see unmeteredLine). */
export const UNMETERED_LINES_PER_INTERVAL = 100;
export const UNMETERED_INTERVAL_MS = 10_000;

/** A budget of lines per interval, with its own count of the lines past it, and what writes that count now. */
interface LineBudget {
  line: (level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, message: string) => void;
  flush: () => void;
}

/** Two budgets per logger (info lines, and warnings and errors), so that every edge of a process (REST, RPC) draws on the same. */
const unmeteredBudgets = new WeakMap<Logger, { info: LineBudget; problems: LineBudget }>();

function lineBudget(logger: Logger, kind: 'info' | 'warn/error'): LineBudget {
  let logged = 0;
  let suppressed = 0;
  let window: NodeJS.Timeout | undefined;
  const endWindow = () => {
    window = undefined;
    logged = 0;
    openBudgets.delete(budget);
    if (suppressed === 0) return;
    logger.warn(
      { suppressed, levels: kind, intervalMs: UNMETERED_INTERVAL_MS },
      'request lines not logged: more requests outside every rate limit (probes, static files, clients over their limit) than the log takes',
    );
    suppressed = 0;
  };
  const budget: LineBudget = {
    line: (level, fields, message) => {
      if (window === undefined) {
        window = detachedFromRequest(() => setTimeout(endWindow, UNMETERED_INTERVAL_MS).unref());
        openBudgets.add(budget);
      }
      if (logged >= UNMETERED_LINES_PER_INTERVAL) {
        suppressed += 1;
        return;
      }
      logged += 1;
      logger[level](fields, message);
    },
    flush: () => {
      if (window !== undefined) clearTimeout(window);
      endWindow();
    },
  };
  return budget;
}

/**
 * Logs the line of a request no rate limit charged: a probe, a static file, a call refused because
 * its client is over its limit. Such requests are as many as a client can send, and one line each
 * let one address make the server log 2.5-5 MB a second, 9-18 GB an hour (helper 207), where the
 * limit bounds every charged request's line. At most UNMETERED_LINES_PER_INTERVAL of them are
 * logged per UNMETERED_INTERVAL_MS in a process, and as many warnings and errors besides: a flood
 * of free `/health` requests hid another client's `/ready` 503s when both shared one budget
 * (helper 211). The rest are counted in one line per kind as the interval ends (the metrics count
 * every request). The summary belongs to no request, as rateLimitedWarning's.
 */
export function unmeteredLine(logger: Logger, level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, message: string): void {
  let budgets = unmeteredBudgets.get(logger);
  if (budgets === undefined) {
    budgets = { info: lineBudget(logger, 'info'), problems: lineBudget(logger, 'warn/error') };
    unmeteredBudgets.set(logger, budgets);
  }
  (level === 'info' ? budgets.info : budgets.problems).line(level, fields, message);
}

/**
 * Writes now the counts of the request lines not logged in the current interval: a shutdown
 * within the interval lost them, the timer that would write them being unref'd (helper 215).
 */
export function flushUnmeteredLines(): void {
  for (const budget of openBudgets) budget.flush();
}

/** The budgets with an interval under way (see flushUnmeteredLines). */
const openBudgets = new Set<LineBudget>();
