// Who calls the service layer: the access token the client presented (not yet checked) and where
// the request came from. The public edge resolves it once per request (REST middleware, or the
// RPC router's contextValues hook) and hands it to the service layer's API in the call's context
// values; the service layer authenticates the token itself, with its own cache. Over a network
// transport the same values travel as internal headers (see callerHeaders), so a split topology
// makes one internal call per public request, not an authentication call and then the real one.
import { createContextKey, type HandlerContext } from '@connectrpc/connect';
import type { ClientInfo } from '../domain/actor.ts';

export interface Caller {
  /** The bearer token of the request's `authorization` header, when it had a well-formed one. */
  accessToken?: string | undefined;
  client: ClientInfo;
}

export const callerKey = createContextKey<Caller>({ client: {} }, { description: 'access token and client of the public request' });

/** The caller of a service-layer call, as its edge resolved it. */
export function callerOf(ctx: HandlerContext): Caller {
  return ctx.values.get(callerKey);
}

/**
 * Longer than any access token this server issues (about 300 characters with the default issuer
 * and audience; JWT_ISSUER and JWT_AUDIENCE are at most 256 each). A longer one is no token of
 * ours: the request is treated as carrying none, so it is refused without being carried into an
 * internal call, whose headers must stay within the layer server's own limit.
 */
export const ACCESS_TOKEN_MAX_LENGTH = 4096;

/** Extracts the bearer token of an `authorization` header, or undefined (also for one no token of ours can be). */
export function bearerToken(header: string | null | undefined): string | undefined {
  if (header === undefined || header === null) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  const token = match?.[1];
  return token !== undefined && token.length <= ACCESS_TOKEN_MAX_LENGTH ? token : undefined;
}

// The internal headers that carry a Caller between layer processes. Only a process that presented
// INTERNAL_API_SECRET is believed (the layer server's interceptor refuses the rest), and each is
// checked again where it is used: the token by the service layer, the client address only recorded.
const ACCESS_TOKEN = 'x-arcana-access-token';
const CLIENT_ADDRESS = 'x-arcana-client-address';
const CLIENT_AGENT = 'x-arcana-client-agent';
const CLIENT_DEVICE = 'x-arcana-client-device';

/** Writes `caller` into the headers of an internal call. */
export function writeCallerHeaders(caller: Caller, headers: Record<string, string>): void {
  if (caller.accessToken !== undefined) headers[ACCESS_TOKEN] = caller.accessToken;
  const { ipAddress, userAgent, deviceToken } = caller.client;
  if (ipAddress !== undefined) headers[CLIENT_ADDRESS] = ipAddress;
  if (userAgent !== undefined) headers[CLIENT_AGENT] = encodeURIComponent(userAgent);
  if (deviceToken !== undefined) headers[CLIENT_DEVICE] = deviceToken;
}

/** The Caller an internal call carries, from its headers. */
export function callerFromHeaders(header: (name: string) => string | undefined): Caller {
  const userAgent = header(CLIENT_AGENT);
  let agent: string | undefined;
  try {
    agent = userAgent === undefined ? undefined : decodeURIComponent(userAgent);
  } catch {
    agent = undefined;
  }
  return { accessToken: header(ACCESS_TOKEN), client: { ipAddress: header(CLIENT_ADDRESS), userAgent: agent, deviceToken: header(CLIENT_DEVICE) } };
}
