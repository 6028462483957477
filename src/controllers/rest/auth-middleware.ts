import type { NextFunction, Request, Response } from 'express';
import { AppError, AuthenticationError } from '../../domain/errors.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import { identifyCaller } from '../../communication/call-context.ts';
import { clientOf } from './request-context.ts';

/** Extracts the bearer token of an `authorization` header, or undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/** Rejects the request with 401 unless it carries a live access token; sets `res.locals.actor`. */
export function requireAuth(auth: AuthService) {
  return async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    const token = bearerToken(req.get('authorization'));
    if (token === undefined) throw new AuthenticationError('Missing or invalid authorization header');
    let actor;
    try {
      actor = await auth.authenticate(token);
    } catch (error) {
      if (error instanceof AppError && error.code === 'AUTHENTICATION_ERROR') res.locals.tokenRejected = true;
      throw error;
    }
    res.locals.actor = { ...actor, client: clientOf(res) };
    identifyCaller(actor.userId);
    next();
  };
}
