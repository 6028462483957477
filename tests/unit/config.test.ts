import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.ts';

/** Secrets as `openssl rand -base64` makes them: production refuses ones that repeat a character. */
const JWT = 'q8Zr1uV6mWk3Tn0bYc5Hs2Lf7Gd4Xa9Pe1Jo6Ri3Uw8Ez5Ky2Nv0Mt7Bh4Cg9Dj1F';
const INTERNAL = 'Vb3Nm8Qa1Zx6Wc4Er9Ty2Ui7Op5As0Df3Gh';

describe('loadConfig', () => {
  it('when nothing is set, then the defaults run a monolith on port 3000 with the embedded database', () => {
    const config = loadConfig({});
    expect(config.server.port).toBe(3000);
    expect(config.database).toEqual({ databaseUrl: undefined, dataDir: './.data', lockTimeoutMs: 5000, queryTimeoutMs: 5000 });
    expect(config.bcryptRounds).toBe(12);
    expect(config.jwt.accessTtlSeconds).toBe(3600);
    expect(config.jwt.refreshTtlSeconds).toBe(30 * 24 * 3600);
    expect(config.deployment.mode).toBe('monolithic');
  });

  it('when METRICS_HOST is unset, then metrics listen on loopback only, wherever the API listens: login failures by reason are not for its clients', () => {
    expect(loadConfig({ HOST: '127.0.0.1', METRICS_PORT: '9464' }).metrics.host).toBe('127.0.0.1');
    expect(loadConfig({ METRICS_PORT: '9464' }).metrics.host).toBe('127.0.0.1');
    expect(loadConfig({ HOST: '127.0.0.1', METRICS_PORT: '9464', METRICS_HOST: '0.0.0.0' }).metrics.host).toBe('0.0.0.0');
  });

  it('when in production without JWT_SECRET or with a short one, then it refuses to start', () => {
    expect(() => loadConfig({ NODE_ENV: 'production' })).toThrow(/JWT_SECRET/);
    expect(() => loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(40) })).toThrow(ConfigError);
    expect(loadConfig({ NODE_ENV: 'production', JWT_SECRET: JWT }).isProduction).toBe(true);
  });

  it('when access tokens would outlive refresh tokens, then it refuses to start: such a token would work on after its session ended (helper 108)', () => {
    expect(() => loadConfig({ JWT_ACCESS_EXPIRES_IN_SECONDS: '3600', JWT_REFRESH_EXPIRES_IN_SECONDS: '60' })).toThrow(
      /JWT_ACCESS_EXPIRES_IN_SECONDS must not be longer than JWT_REFRESH_EXPIRES_IN_SECONDS/,
    );
    expect(() => loadConfig({ JWT_REFRESH_EXPIRES_IN_SECONDS: '1800' })).toThrow(ConfigError);
    expect(loadConfig({ JWT_ACCESS_EXPIRES_IN_SECONDS: '60', JWT_REFRESH_EXPIRES_IN_SECONDS: '60' }).jwt.accessTtlSeconds).toBe(60);
  });

  it('when values are malformed, then the error names each variable', () => {
    expect(() => loadConfig({ PORT: 'eighty', BCRYPT_ROUNDS: '3', DATABASE_URL: 'sqlite://x' })).toThrow(
      /PORT[\s\S]*DATABASE_URL[\s\S]*BCRYPT_ROUNDS|PORT[\s\S]*BCRYPT_ROUNDS[\s\S]*DATABASE_URL/,
    );
  });

  it('when DATABASE_URL is a PostgreSQL, MySQL or MariaDB URL, then it is taken; another scheme is refused by name', () => {
    for (const url of ['postgresql://db/arcana', 'postgres://db/arcana', 'mysql://db:3306/arcana', 'mariadb://db/arcana']) {
      expect(loadConfig({ DATABASE_URL: url }).database.databaseUrl).toBe(url);
    }
    expect(() => loadConfig({ DATABASE_URL: 'sqlserver://db/arcana' })).toThrow(/DATABASE_URL[\s\S]*postgresql:\/\/, mysql:\/\/ or mariadb:\/\//);
  });

  it('when CORS_ORIGINS holds what a browser never sends as an Origin, then it refuses to start and names it; origins are taken', () => {
    // Matched exactly, so such an entry allowed nothing, silently (helper 60).
    for (const value of [
      '*',
      'https://*.example.com',
      'ftp://app.example.com',
      'https://App.example.com',
      'https://app.example.com/',
      'https://app.example.com:443',
      'app.example.com',
      'https://app.example.com/path',
      'null',
    ]) {
      expect(() => loadConfig({ CORS_ORIGINS: value }), value).toThrow(/CORS_ORIGINS[\s\S]*must be origins as browsers send them/);
    }
    expect(loadConfig({ CORS_ORIGINS: 'https://app.example.com, http://localhost:5173,https://[::1]:8443' }).corsOrigins).toEqual([
      'https://app.example.com',
      'http://localhost:5173',
      'https://[::1]:8443',
    ]);
  });

  it('when TRUST_PROXY names what is not an address, a subnet or a keyword, then it refuses to start and names it; valid forms are taken', () => {
    for (const value of ['banana', '10.0.0.0/33', 'loopback,203.0.113.7/abc', '::1/129']) {
      expect(() => loadConfig({ TRUST_PROXY: value }), value).toThrow(/TRUST_PROXY[\s\S]*must be true, false, a number of hops/);
    }
    for (const value of ['true', 'false', '2', 'loopback', 'loopback, 10.0.0.0/8, fd00::/8', '203.0.113.7']) {
      expect(() => loadConfig({ TRUST_PROXY: value }), value).not.toThrow();
    }
  });

  it('when TRACE_TRUSTED_PROXIES says every peer (true, a hop count) or what is not an address, then it refuses to start; addresses, subnets and keywords are taken', () => {
    for (const value of ['true', 'false', '1', ' 2 ', 'banana', '10.0.0.0/33', '1,2', '1,loopback']) {
      expect(() => loadConfig({ TRACE_TRUSTED_PROXIES: value }), value).toThrow(/TRACE_TRUSTED_PROXIES[\s\S]*must/);
    }
    expect(loadConfig({}).server.traceTrustedProxies).toBe(false);
    expect(loadConfig({ TRUST_PROXY: '1' }).server.traceTrustedProxies).toBe(false);
    for (const value of ['loopback', 'loopback, 10.0.0.0/8, fd00::/8', '203.0.113.7']) {
      expect(loadConfig({ TRACE_TRUSTED_PROXIES: value }).server.traceTrustedProxies, value).toBe(value);
    }
  });

  it('when only some ADMIN_* variables are set, then it refuses to start', () => {
    expect(() => loadConfig({ ADMIN_USERNAME: 'root' })).toThrow(/must be set together/);
  });

  it('when SESSION_PURGE_RETENTION_MS is under an hour, then it refuses to start: the purge must not take what replay detection and listed session ids still need', () => {
    expect(loadConfig({ SESSION_PURGE_RETENTION_MS: '3600000' }).sessionPurge.retentionMs).toBe(3_600_000);
    for (const value of ['0', '1000', '3599999']) expect(() => loadConfig({ SESSION_PURGE_RETENTION_MS: value }), value).toThrow(/SESSION_PURGE_RETENTION_MS/);
  });

  it('when DATABASE_QUERY_TIMEOUT_MS is unset, then a statement gets 5 s or the lock wait allowed, if longer; set shorter than the lock wait, it refuses to start', () => {
    expect(loadConfig({}).database.queryTimeoutMs).toBe(5000);
    expect(loadConfig({ DATABASE_LOCK_TIMEOUT_MS: '60000' }).database.queryTimeoutMs).toBe(60000);
    expect(loadConfig({ DATABASE_QUERY_TIMEOUT_MS: '2000', DATABASE_LOCK_TIMEOUT_MS: '1000' }).database).toMatchObject({ queryTimeoutMs: 2000, lockTimeoutMs: 1000 });
    expect(() => loadConfig({ DATABASE_QUERY_TIMEOUT_MS: '2000' })).toThrow(/DATABASE_QUERY_TIMEOUT_MS must not be shorter than DATABASE_LOCK_TIMEOUT_MS/);
  });

  it('when lists are given, then they are split on commas', () => {
    expect(loadConfig({ CORS_ORIGINS: 'https://a.example, https://b.example' }).corsOrigins).toEqual(['https://a.example', 'https://b.example']);
  });

  it('when a layered topology is described, then each layer gets its protocol, URLs and deadlines', () => {
    const controller = loadConfig({
      DEPLOYMENT_MODE: 'layered',
      DEPLOYMENT_LAYER: 'controller',
      COMMUNICATION_PROTOCOL: 'http',
      SERVICE_URLS: 'http://service-a:3001, http://service-b:3001/',
    });
    expect(controller.deployment).toMatchObject({ mode: 'layered', layer: 'controller', protocol: 'http', serviceUrls: ['http://service-a:3001', 'http://service-b:3001'] });
    const service = loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://repository:3002', INTERNAL_TIMEOUT_MS: '800' });
    expect(service.deployment).toMatchObject({ protocol: 'grpc', repositoryUrls: ['http://repository:3002'], internalTimeoutMs: 800, internalRetries: 2 });
    const repository = loadConfig({ DEPLOYMENT_MODE: 'microservices', DEPLOYMENT_LAYER: 'repository', DATABASE_URL: 'postgresql://db/arcana' });
    expect(repository.deployment.layer).toBe('repository');
  });

  it('when a layer serves no clients, then its HTTP/2 connections carry as many calls as the layers above send: they share one connection', () => {
    const repository = loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'repository', DATABASE_URL: 'postgresql://db/arcana' });
    const service = loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://repository:3002' });
    const controller = loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'http://service:3001' });
    expect([repository, service].map((config) => config.server.connections.http2MaxConcurrentStreams)).toEqual([10_000, 10_000]);
    expect([controller, loadConfig({})].map((config) => config.server.connections.http2MaxConcurrentStreams)).toEqual([100, 100]);
    expect(
      loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://r:1', HTTP2_MAX_CONCURRENT_STREAMS: '500' }).server.connections
        .http2MaxConcurrentStreams,
    ).toBe(500);
  });

  it('when the layer does not belong to the mode, then it refuses to start and names the layers that do', () => {
    expect(() => loadConfig({ DEPLOYMENT_LAYER: 'controller' })).toThrow('DEPLOYMENT_LAYER=controller is not a layer of DEPLOYMENT_MODE=monolithic; use one of: monolithic.');
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'auth-service', REPOSITORY_URLS: 'http://r:1' })).toThrow(
      /not a layer of DEPLOYMENT_MODE=layered; use one of: controller, service, repository/,
    );
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'microservices', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://r:1' })).toThrow(/auth-service, user-service/);
  });

  it('when the protocol cannot connect the layers, then it refuses to start', () => {
    expect(() => loadConfig({ COMMUNICATION_PROTOCOL: 'grpc' })).toThrow(/monolithic calls its layers in-process: COMMUNICATION_PROTOCOL must be direct/);
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'repository', COMMUNICATION_PROTOCOL: 'direct' })).toThrow(/must be http or grpc/);
  });

  it('when a layer lacks the URLs of the layer it calls, or has URLs it does not use, then it says which', () => {
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller' })).toThrow(/calls other processes: set SERVICE_URLS\./);
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'microservices', DEPLOYMENT_LAYER: 'controller', AUTH_SERVICE_URLS: 'http://a:3003' })).toThrow(/set USER_SERVICE_URLS\./);
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service' })).toThrow(/set REPOSITORY_URLS/);
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'http://s:1', REPOSITORY_URLS: 'http://r:2' })).toThrow(
      /does not use REPOSITORY_URLS; unset it/,
    );
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'service:3001' })).toThrow(
      /SERVICE_URLS[\s\S]*http:\/\/ or https:\/\/ base URLs/,
    );
    expect(() => loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://r:2', DATABASE_URL: 'postgresql://db/x' })).toThrow(
      /DATABASE_URL belongs to the repository layer only/,
    );
  });

  it('when in production, then only the layers that handle tokens need JWT_SECRET', () => {
    expect(() => loadConfig({ NODE_ENV: 'production', DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://r:2' })).toThrow(/JWT_SECRET/);
    expect(
      loadConfig({ NODE_ENV: 'production', DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'http://s:1', INTERNAL_API_SECRET: INTERNAL }).isProduction,
    ).toBe(true);
  });

  it('when split layers run in production, then they need a shared INTERNAL_API_SECRET of at least 32 characters', () => {
    const controller = { NODE_ENV: 'production', DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'http://s:1' };
    expect(() => loadConfig(controller)).toThrow(/needs INTERNAL_API_SECRET/);
    expect(() => loadConfig({ ...controller, INTERNAL_API_SECRET: 'short' })).toThrow('INTERNAL_API_SECRET must be at least 32 characters.');
    expect(loadConfig({ ...controller, INTERNAL_API_SECRET: INTERNAL }).deployment.internalSecret).toBe(INTERNAL);
    expect(loadConfig({ INTERNAL_API_SECRET: INTERNAL }).deployment.internalSecret).toBeUndefined();
  });
});

describe('production secrets and settings (helper 95)', () => {
  const production = { NODE_ENV: 'production', JWT_SECRET: JWT };
  it('when a secret is long but not random (spaces, one letter, a placeholder repeated), then it refuses to start', () => {
    for (const secret of [' '.repeat(64), 'a'.repeat(64), 'REPLACE-ME'.repeat(7)]) {
      expect(() => loadConfig({ ...production, JWT_SECRET: secret }), secret).toThrow(/JWT_SECRET must be random/);
    }
    const controller = { ...production, DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'http://s:1' };
    expect(() => loadConfig({ ...controller, INTERNAL_API_SECRET: 'a'.repeat(32) })).toThrow(/INTERNAL_API_SECRET must be random/);
    expect(() => loadConfig({ ...controller, INTERNAL_API_SECRET: JWT })).toThrow(/must differ/);
    // Outside production (tests, a laptop) any long secret does.
    expect(loadConfig({ JWT_SECRET: 'a'.repeat(64) }).jwt.secret).toBe('a'.repeat(64));
  });

  it('when a secret, a database password or the admin password is one this repository publishes, then production refuses to start naming it (helper 165)', () => {
    const repository = { ...production, DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'repository', INTERNAL_API_SECRET: INTERNAL };
    // k8s/base's placeholder, the Compose headers' and README's, any case.
    for (const url of ['postgresql://arcana:REPLACE-ME@postgres:5432/arcana', 'postgresql://arcana:change-me@postgres:5432/arcana', 'mysql://arcana:Change-Me@mysql:3306/arcana']) {
      expect(() => loadConfig({ ...repository, DATABASE_URL: url }), url).toThrow(/DATABASE_URL's password is a value this repository publishes/);
    }
    expect(() => loadConfig({ ...production, REDIS_URL: 'redis://:change-me@redis:6379' })).toThrow(/REDIS_URL's password/);
    // In the query, which the drivers read too, node-postgres in preference to the user part's (helper 167).
    for (const url of ['postgresql://arcana@postgres:5432/arcana?password=REPLACE-ME', 'postgresql://arcana:s3cr3t-0wn@postgres:5432/arcana?password=change-me']) {
      expect(() => loadConfig({ ...repository, DATABASE_URL: url }), url).toThrow(/DATABASE_URL's password is a value this repository publishes/);
    }
    expect(() => loadConfig({ ...production, REDIS_URL: 'redis://redis:6379?password=change-me' })).toThrow(/REDIS_URL's password/);
    // A password that is not valid percent-encoding is compared as written, not a crash.
    expect(loadConfig({ ...repository, DATABASE_URL: 'postgresql://arcana:50%off@postgres:5432/arcana' }).database.databaseUrl).toContain('50%off');
    // The development key, the tests' keys.
    for (const secret of ['arcana-development-secret-do-not-use-in-production', 'test-internal-secret-shared-by-every-layer']) {
      expect(() => loadConfig({ ...repository, INTERNAL_API_SECRET: secret }), secret).toThrow(/INTERNAL_API_SECRET is a value this repository publishes/);
    }
    expect(() => loadConfig({ ...production, JWT_SECRET: 'test-secret-that-is-long-enough-for-hs256-0123456789'.padEnd(64, 'x') })).not.toThrow(/publishes/);
    // The README's and the tests' example passwords.
    const admin = { ...production, ADMIN_USERNAME: 'root', ADMIN_EMAIL: 'root@example.com' };
    for (const password of ['Sturdy-Passw0rd!', 'Admin@12345', 'admin@12345']) {
      expect(() => loadConfig({ ...admin, ADMIN_PASSWORD: password }), password).toThrow(/ADMIN_PASSWORD is a password this repository prints/);
    }
    expect(loadConfig({ ...admin, ADMIN_PASSWORD: 'An0ther-Own-Passw0rd!' }).bootstrapAdmin?.username).toBe('root');
    expect(loadConfig({ ...repository, DATABASE_URL: 'postgresql://arcana:s3cr3t-0wn@postgres:5432/arcana' }).database.databaseUrl).toContain('s3cr3t-0wn');
    // Outside production the examples work, as the README's set-up uses them.
    expect(loadConfig({ ...admin, NODE_ENV: 'development', ADMIN_PASSWORD: 'Sturdy-Passw0rd!' }).bootstrapAdmin?.username).toBe('root');
  });

  it('when a process neither signs nor checks tokens, then it needs no JWT_SECRET and warns of no development secret', () => {
    expect(loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller', SERVICE_URLS: 'http://s:1' }).jwt.usingDevelopmentSecret).toBe(false);
    expect(loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'repository' }).jwt.usingDevelopmentSecret).toBe(false);
    expect(loadConfig({ DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'service', REPOSITORY_URLS: 'http://r:2' }).jwt.usingDevelopmentSecret).toBe(true);
  });

  it('when BCRYPT_ROUNDS is under 10 in production, then it refuses to start', () => {
    expect(() => loadConfig({ ...production, BCRYPT_ROUNDS: '4' })).toThrow(/BCRYPT_ROUNDS must be at least 10/);
    expect(loadConfig({ ...production, BCRYPT_ROUNDS: '10' }).bcryptRounds).toBe(10);
    expect(loadConfig({ BCRYPT_ROUNDS: '4' }).bcryptRounds).toBe(4);
  });

  it('when a number is blank, hexadecimal, exponential or binary, then it refuses to start; decimal digits with spaces around are taken', () => {
    for (const value of [' ', '\t', '0x10', '1e3', '0b11', '-1', '1.5']) {
      expect(() => loadConfig({ CONNECTIONS_PER_ADDRESS_MAX: value }), JSON.stringify(value)).toThrow(/CONNECTIONS_PER_ADDRESS_MAX[\s\S]*decimal digits/);
      expect(() => loadConfig({ PORT: value }), JSON.stringify(value)).toThrow(/PORT/);
    }
    expect(loadConfig({ PORT: ' 3005 ' }).server.port).toBe(3005);
    expect(() => loadConfig({ BODY_LIMIT: '99999999999999mb' })).toThrow(/BODY_LIMIT[\s\S]*at most 64mb/);
  });

  it('when TRUST_PROXY has spaces around a hop count, then it is that hop count; a list with a bare number is refused', () => {
    expect(loadConfig({ TRUST_PROXY: '1 ' }).server.trustProxy).toBe(1);
    for (const value of ['1,2', 'loopback, 1']) expect(() => loadConfig({ TRUST_PROXY: value }), value).toThrow(/TRUST_PROXY[\s\S]*no hop counts/);
  });

  it('when a layer URL has a user part, an impossible port or no host, or gRPC is given https://, then it refuses to start naming it', () => {
    const controller = { DEPLOYMENT_MODE: 'layered', DEPLOYMENT_LAYER: 'controller' };
    for (const url of ['http://service:3001@evil.example', 'http://service:99999', 'http://service:0', 'http://:3001']) {
      expect(() => loadConfig({ ...controller, SERVICE_URLS: url }), url).toThrow(/SERVICE_URLS/);
    }
    expect(() => loadConfig({ ...controller, SERVICE_URLS: 'https://service:3001' })).toThrow(/cleartext HTTP\/2[\s\S]*https:\/\/service:3001/);
    expect(loadConfig({ ...controller, COMMUNICATION_PROTOCOL: 'http', SERVICE_URLS: 'https://service:3001' }).deployment.serviceUrls).toEqual(['https://service:3001']);
  });
});

describe('error details in 500 answers', () => {
  it('when NODE_ENV is unset, test or production, then internals are not exposed; only an explicit development exposes them', () => {
    const base = { JWT_SECRET: JWT };
    expect(loadConfig(base).exposeInternals).toBe(false);
    expect(loadConfig({ ...base, NODE_ENV: 'test' }).exposeInternals).toBe(false);
    expect(loadConfig({ ...base, NODE_ENV: 'production' }).exposeInternals).toBe(false);
    expect(loadConfig({ ...base, NODE_ENV: 'development' }).exposeInternals).toBe(true);
  });
});
