// The embedded database path: no DATABASE_URL, a PGlite directory instead.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import supertest from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApplication, type Application } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { bearer, newUser, TEST_ENV } from '../helpers/test-app.ts';

let dataDir: string;
let app: Application;

async function start(): Promise<Application> {
  const config = loadConfig({ ...TEST_ENV, DATA_DIR: dataDir });
  return createApplication(config, createLogger({ level: 'silent' }));
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'arcana-pglite-'));
  app = await start();
});

afterAll(async () => {
  await app.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('embedded PGlite database', () => {
  it('when no DATABASE_URL is set, then register → login → me → refresh → logout works and data survives a restart', async () => {
    expect(app.database?.kind).toBe('pglite');
    let request = supertest(app.http);
    const body = newUser('pglite');
    expect((await request.post('/api/v1/auth/register').send(body)).status).toBe(201);
    const login = await request.post('/api/v1/auth/login').send({ usernameOrEmail: body.username, password: body.password });
    expect(login.status).toBe(200);
    const { accessToken, refreshToken } = login.body.data.tokens;
    expect((await request.get('/api/v1/auth/me').set(...bearer(accessToken))).body.data.username).toBe(body.username);
    const refreshed = await request.post('/api/v1/auth/refresh').send({ refreshToken });
    expect(refreshed.status).toBe(200);
    expect((await request.post('/api/v1/auth/logout').set(...bearer(refreshed.body.data.accessToken))).status).toBe(200);

    await app.close();
    app = await start();
    request = supertest(app.http);
    const again = await request.post('/api/v1/auth/login').send({ usernameOrEmail: body.username, password: body.password });
    expect(again.status).toBe(200);
  });
});
