import { pino, type DestinationStream, type Logger } from 'pino';

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
    // Fields every line gets (the current trace id, when tracing is on); a line's own win.
    ...(options.mixin === undefined ? {} : { mixin: options.mixin }),
  } satisfies pino.LoggerOptions;
  return options.destination === undefined ? pino(settings) : pino(settings, options.destination);
}
