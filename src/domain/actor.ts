import type { UserRole } from '../../gen/proto/arcana/user/v1/user_pb.js';

/** The authenticated caller of a request, as established from its access token. */
export interface Actor {
  userId: number;
  role: UserRole;
  /** The token pair (session) the request's access token belongs to. */
  sessionId: number;
  /** Where the request came from, when the edge knows: for throttling and the audit log. */
  client?: ClientInfo | undefined;
}

/**
 * Where a request came from, as the public edge resolved it once for every protocol (see
 * src/infrastructure/client-address.ts); recorded with the sessions it opens.
 */
export interface ClientInfo {
  ipAddress?: string | undefined;
  userAgent?: string | undefined;
  /** The known-device token the client presented, not yet verified (see DeviceTokens). */
  deviceToken?: string | undefined;
}
