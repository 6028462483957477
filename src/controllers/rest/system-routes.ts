import { Router } from 'express';
import type { components } from '../../../gen/openapi/schema.d.ts';
import type { ReadinessCheck } from '../../rpc/readiness.ts';
import { sendSuccess } from './envelope.ts';

type Schemas = components['schemas'];

/** `/health` (the process is alive), `/ready` (its dependencies answer) and `/public/info`. */
export function createSystemRoutes(options: { info: Schemas['PublicInfo']; readiness: Record<string, ReadinessCheck> }): Router {
  const router = Router();

  router.get('/health', (_req, res) => {
    const body: Schemas['Health'] = { status: 'ok' };
    res.json(body);
  });

  router.get('/ready', async (_req, res) => {
    const entries = await Promise.all(
      Object.entries(options.readiness).map(async ([name, check]) => {
        try {
          await check();
          return [name, 'ok'] as const;
        } catch {
          return [name, 'fail'] as const;
        }
      }),
    );
    const ready = entries.every(([, state]) => state === 'ok');
    const body: Schemas['Readiness'] = { status: ready ? 'ready' : 'unavailable', checks: Object.fromEntries(entries) };
    res.status(ready ? 200 : 503).json(body);
  });

  router.get('/public/info', (_req, res) => {
    sendSuccess(res, options.info, 'Service information');
  });

  return router;
}
