import type { UserRole } from '../../gen/proto/arcana/user/v1/user_pb.js';

/** The authenticated caller of a request, as established from its access token. */
export interface Actor {
  userId: number;
  role: UserRole;
  /** The token pair (session) the request's access token belongs to. */
  sessionId: number;
}

/** Where a request came from; recorded with the sessions it opens. */
export interface ClientInfo {
  ipAddress?: string | undefined;
  userAgent?: string | undefined;
}
