import { Router, type Response } from 'express';
import type { components } from '../../../gen/openapi/schema.d.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import { requireAuth } from './auth-middleware.ts';
import { sendSuccess, sendUser } from './envelope.ts';
import { actorOf, clientOf } from './request-context.ts';
import { deviceTokenHeaders, IDEMPOTENT_REPLAYED_HEADER, idempotencyKeyOf, NO_STORE_HEADERS } from '../client-edge.ts';
import { runIdempotent } from '../../communication/call-context.ts';
import { toRestSession, toRestTokenPair, toRestUser } from './rest-mapping.ts';

type Schemas = components['schemas'];

/** `/api/v1/auth`: bodies arrive already validated against openapi.yaml. */
export function createAuthRoutes(auth: AuthService): Router {
  const router = Router();
  const authenticated = requireAuth(auth);

  router.post('/register', async (req, res) => {
    const body = req.body as Schemas['RegisterRequest'];
    const key = idempotencyKeyOf((name) => req.get(name));
    const { result, replayed } = await runIdempotent(key, () => auth.register(body, clientOf(res)));
    if (replayed) res.setHeader(IDEMPOTENT_REPLAYED_HEADER, 'true');
    tokenAnswerHeaders(res, result.deviceToken);
    sendSuccess(res, { user: toRestUser(result.user), tokens: toRestTokenPair(result.tokens) }, 'User registered successfully', 201);
  });

  router.post('/login', async (req, res) => {
    const body = req.body as Schemas['LoginRequest'];
    const result = await auth.login(body, clientOf(res));
    tokenAnswerHeaders(res, result.deviceToken);
    sendSuccess(res, { user: toRestUser(result.user), tokens: toRestTokenPair(result.tokens) }, 'Login successful');
  });

  router.post('/logout', authenticated, async (_req, res) => {
    await auth.logout(actorOf(res));
    sendSuccess(res, null, 'Logout successful');
  });

  router.post('/refresh', async (req, res) => {
    const body = req.body as Schemas['RefreshTokenRequest'];
    const tokens = await auth.refresh(body.refreshToken, clientOf(res));
    tokenAnswerHeaders(res, undefined);
    sendSuccess(res, toRestTokenPair(tokens), 'Token refreshed successfully');
  });

  router.get('/me', authenticated, async (_req, res) => {
    const user = await auth.currentUser(actorOf(res));
    sendUser(res, user, 'User retrieved successfully');
  });

  router.get('/tokens', authenticated, async (_req, res) => {
    const sessions = await auth.listSessions(actorOf(res));
    sendSuccess(res, sessions.map(toRestSession), 'Tokens retrieved successfully');
  });

  router.post('/tokens/revoke-all', authenticated, async (_req, res) => {
    const revokedCount = await auth.revokeAll(actorOf(res));
    sendSuccess(res, { revokedCount }, 'All tokens revoked');
  });

  return router;
}

/** Token answers are never cached; a login also hands the client its known-device token. */
function tokenAnswerHeaders(res: Response, deviceToken: string | undefined): void {
  for (const [name, value] of NO_STORE_HEADERS) res.setHeader(name, value);
  if (deviceToken !== undefined) for (const [name, value] of deviceTokenHeaders(deviceToken)) res.append(name, value);
}
