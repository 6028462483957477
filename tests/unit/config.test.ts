import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.ts';

describe('loadConfig', () => {
  it('when nothing is set, then the defaults run a monolith on port 3000 with the embedded database', () => {
    const config = loadConfig({});
    expect(config.server.port).toBe(3000);
    expect(config.database).toEqual({ databaseUrl: undefined, dataDir: './.data' });
    expect(config.bcryptRounds).toBe(12);
    expect(config.jwt.accessTtlSeconds).toBe(3600);
    expect(config.jwt.refreshTtlSeconds).toBe(30 * 24 * 3600);
    expect(config.deployment.mode).toBe('monolithic');
  });

  it('when in production without JWT_SECRET or with a short one, then it refuses to start', () => {
    expect(() => loadConfig({ NODE_ENV: 'production' })).toThrow(/JWT_SECRET/);
    expect(() => loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(40) })).toThrow(ConfigError);
    expect(loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(64) }).isProduction).toBe(true);
  });

  it('when values are malformed, then the error names each variable', () => {
    expect(() => loadConfig({ PORT: 'eighty', BCRYPT_ROUNDS: '3', DATABASE_URL: 'mysql://x' })).toThrow(
      /PORT[\s\S]*DATABASE_URL[\s\S]*BCRYPT_ROUNDS|PORT[\s\S]*BCRYPT_ROUNDS[\s\S]*DATABASE_URL/,
    );
  });

  it('when only some ADMIN_* variables are set, then it refuses to start', () => {
    expect(() => loadConfig({ ADMIN_USERNAME: 'root' })).toThrow(/must be set together/);
  });

  it('when lists are given, then they are split on commas', () => {
    expect(loadConfig({ CORS_ORIGINS: 'https://a.example, https://b.example' }).corsOrigins).toEqual([
      'https://a.example',
      'https://b.example',
    ]);
  });
});
