// The four auth tests of spec §22, with their requests and assertions exactly as written. Only
// the set-up differs: the app is built by the composition root on a fresh PostgreSQL schema
// instead of a module-level createApp() and PrismaClient.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;
let request: TestApp['request'];

describe('Auth API', () => {
  beforeAll(async () => {
    t = await createTestApp();
    request = t.request;
  });

  afterAll(async () => {
    await t.close();
  });

  describe('POST /api/v1/auth/register', () => {
    it('should register a new user', async () => {
      const response = await request.post('/api/v1/auth/register').send({
        username: 'testuser',
        email: 'test@example.com',
        password: 'Test@1234',
      });

      expect(response.status).toBe(201);
      expect(response.body.success).toBe(true);
      expect(response.body.data.user.username).toBe('testuser');
      expect(response.body.data.tokens.accessToken).toBeDefined();
    });

    it('should reject duplicate username', async () => {
      await request.post('/api/v1/auth/register').send({
        username: 'duplicate',
        email: 'dup1@example.com',
        password: 'Test@1234',
      });

      const response = await request.post('/api/v1/auth/register').send({
        username: 'duplicate',
        email: 'dup2@example.com',
        password: 'Test@1234',
      });

      expect(response.status).toBe(409);
      expect(response.body.error.code).toBe('CONFLICT');
    });
  });

  describe('POST /api/v1/auth/login', () => {
    it('should login with valid credentials', async () => {
      // Register first
      await request.post('/api/v1/auth/register').send({
        username: 'logintest',
        email: 'login@example.com',
        password: 'Test@1234',
      });

      const response = await request.post('/api/v1/auth/login').send({
        usernameOrEmail: 'logintest',
        password: 'Test@1234',
      });

      expect(response.status).toBe(200);
      expect(response.body.success).toBe(true);
      expect(response.body.data.tokens.accessToken).toBeDefined();
    });

    it('should reject invalid credentials', async () => {
      const response = await request.post('/api/v1/auth/login').send({
        usernameOrEmail: 'nonexistent',
        password: 'WrongPass@1',
      });

      expect(response.status).toBe(401);
      expect(response.body.error.code).toBe('AUTHENTICATION_ERROR');
    });
  });
});
