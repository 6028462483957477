import type { IRouter } from 'express';
import type { components } from '../../../gen/openapi/schema.d.ts';
import { sendSuccess, sendUser } from './envelope.ts';
import { requireField } from '../../domain/message-mapping.ts';
import { callOptions, requireBearer, type ServiceClients } from './service-call.ts';
import { toRestSession, toRestTokenPair, toRestUser } from './rest-mapping.ts';

type Schemas = components['schemas'];

/** `/api/v1/auth`, on the application's own router (see addUserRoutes): bodies arrive already validated against openapi.yaml. */
export function addAuthRoutes(router: IRouter, { auth }: ServiceClients): void {
  const at = (path: string) => `/api/v1/auth${path}`;

  router.post(at('/register'), async (req, res) => {
    const body = req.body as Schemas['RegisterRequest'];
    const { user, tokens } = await auth.register(body, callOptions(req, res, { idempotent: true }));
    sendSuccess(res, { user: toRestUser(requireField(user, 'user')), tokens: toRestTokenPair(requireField(tokens, 'tokens')) }, 'User registered successfully', 201);
  });

  router.post(at('/login'), async (req, res) => {
    const body = req.body as Schemas['LoginRequest'];
    const { user, tokens } = await auth.login(body, callOptions(req, res));
    sendSuccess(res, { user: toRestUser(requireField(user, 'user')), tokens: toRestTokenPair(requireField(tokens, 'tokens')) }, 'Login successful');
  });

  router.post(at('/logout'), requireBearer, async (req, res) => {
    await auth.logout({}, callOptions(req, res));
    sendSuccess(res, null, 'Logout successful');
  });

  router.post(at('/refresh'), async (req, res) => {
    const body = req.body as Schemas['RefreshTokenRequest'];
    const { tokens } = await auth.refreshToken({ refreshToken: body.refreshToken }, callOptions(req, res));
    sendSuccess(res, toRestTokenPair(requireField(tokens, 'tokens')), 'Token refreshed successfully');
  });

  router.get(at('/me'), requireBearer, async (req, res) => {
    const { user } = await auth.getCurrentUser({}, callOptions(req, res));
    // One URL for every caller, and versions that every user has (1, 2, 3…): Express answered 304
    // to an If-None-Match that named the caller's version, whoever's copy the client held, so a
    // client cache keyed by URL kept showing Alice's profile to Bob after an account switch
    // (helper 171). The ETag still names the caller's version, for If-Match on /users/{id}; this
    // URL takes no If-None-Match (openapi.yaml declares none), and says it varies by caller.
    delete req.headers['if-none-match'];
    res.vary('Authorization');
    sendUser(res, requireField(user, 'user'), 'User retrieved successfully');
  });

  router.get(at('/tokens'), requireBearer, async (req, res) => {
    const { sessions } = await auth.listTokens({}, callOptions(req, res));
    sendSuccess(res, sessions.map(toRestSession), 'Tokens retrieved successfully');
  });

  router.post(at('/tokens/revoke-all'), requireBearer, async (req, res) => {
    const { revokedCount } = await auth.revokeAllTokens({}, callOptions(req, res));
    sendSuccess(res, { revokedCount }, 'All tokens revoked');
  });
}
