// How a REST route calls the service layer: through the generated client of the public service,
// whose transport is in-process (the monolith: no serialization) or a layer process's address.
// The caller (access token, client) goes in the call's context values, the Idempotency-Key in its
// headers; the answer's client-facing headers (no-store, device token, replay mark) are relayed.
import { createContextValues, type CallOptions, type Client } from '@connectrpc/connect';
import type { NextFunction, Request, Response } from 'express';
import type { AuditService } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import type { AuthService } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { UserService } from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import { IDEMPOTENCY_KEY_FIELD } from '../../domain/idempotency-key.ts';
import { AuthenticationError } from '../../domain/errors.ts';
import { bearerToken, callerKey } from '../../rpc/caller.ts';
import { idempotencyKeyOf, relayAnswerHeaders } from '../../rpc/client-edge.ts';
import { clientOf } from './request-context.ts';

/** The service layer as the facades call it. */
export interface ServiceClients {
  auth: Client<typeof AuthService>;
  users: Client<typeof UserService>;
  audit: Client<typeof AuditService>;
}

/**
 * Refuses a request without a well-formed bearer token at once (401, no call to the service
 * layer) and keeps the token for the call. Whether the token is live is the service layer's to say.
 */
export function requireBearer(req: Request, res: Response, next: NextFunction): void {
  const token = bearerToken(req.get('authorization'));
  if (token === undefined) throw new AuthenticationError('Missing or invalid authorization header');
  res.locals.accessToken = token;
  next();
}

/** The options of one service-layer call made for this request. */
export function callOptions(req: Request, res: Response, options: { idempotent?: boolean } = {}): CallOptions {
  const key = options.idempotent === true ? idempotencyKeyOf((name) => req.get(name)) : undefined;
  return {
    contextValues: createContextValues().set(callerKey, { accessToken: res.locals.accessToken, client: clientOf(res) }),
    headers: key === undefined ? undefined : { [IDEMPOTENCY_KEY_FIELD]: key },
    onHeader: (header) => {
      relayAnswerHeaders(
        header,
        { set: (name, value) => res.setHeader(name, value), append: (name, value) => res.append(name, value) },
        { origin: req.get('origin'), host: req.get('host') },
      );
    },
  };
}
