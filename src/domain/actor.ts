import type * as db from '../../gen/prisma/client.ts';
import type { UserRole } from '../../gen/proto/arcana/user/v1/user_pb.js';

/** The authenticated caller of a request, as established from its access token. */
export interface Actor {
  userId: number;
  role: UserRole;
  /** The token pair (session) the request's access token belongs to. */
  sessionId: number;
  /** Its login chain: the pairs that rotations of the same session have made. */
  familyId: string;
  /** Where the request came from, when the edge knows: for throttling and the audit log. */
  client?: ClientInfo | undefined;
  /**
   * The caller's own record as authentication read it (from the cache or the database) to check
   * that the account is active. A call that reads the caller's profile (`/auth/me`, a user's GET
   * of itself) answers with it rather than reading the same record a second time.
   */
  record?: Omit<db.User, 'passwordHash'> | undefined;
}

/**
 * Where a request came from, as the public edge resolved it once for every protocol (see
 * src/infrastructure/client-address.ts); recorded with the sessions it opens.
 */
/**
 * The most of a user agent kept: what sessions and audit events store (VARCHAR(500)). The edge
 * cuts it there, before it travels between layers (percent-encoded: up to six bytes per byte),
 * where an 11 000-byte agent of non-ASCII bytes filled the internal call's header list and the
 * request failed with 503.
 */
export const USER_AGENT_MAX_LENGTH = 500;

export interface ClientInfo {
  ipAddress?: string | undefined;
  userAgent?: string | undefined;
  /** The known-device token the client presented, not yet verified (see DeviceTokens). */
  deviceToken?: string | undefined;
}
