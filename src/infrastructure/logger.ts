import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs. Credentials are redacted wherever they might be logged by accident.
 * `destination` defaults to stdout; tests pass one to read what was logged.
 */
export function createLogger(options: { level: string; name?: string; destination?: DestinationStream }): Logger {
  const settings = {
    level: options.level,
    name: options.name ?? 'arcana-cloud',
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers.cookie',
        '*.password',
        '*.passwordHash',
        '*.oldPassword',
        '*.newPassword',
        '*.refreshToken',
        '*.accessToken',
      ],
      censor: '[redacted]',
    },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  } satisfies pino.LoggerOptions;
  return options.destination === undefined ? pino(settings) : pino(settings, options.destination);
}
