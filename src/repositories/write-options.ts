import { AuthenticationError, AuthorizationError } from '../domain/errors.ts';
import { currentCallContext } from '../infrastructure/call-context.ts';

/** How a write is asked for. */
export interface WriteOptions {
  /**
   * The call may repeat one already carried out whose answer was lost (a retry between layers,
   * REPEAT_HEADER in communication/layer-transport.ts). A write that finds its own result in place
   * answers as the first attempt would have: RFC 9110 (13.1.1) allows the same of HTTP, "the
   * change requested by the user agent has already succeeded". When absent, the call context of
   * the layer serving the call says.
   */
  repeat?: boolean | undefined;
  /** Who the write is made for, checked again inside the write's own transaction (see ActingAs). */
  actingAs?: ActingAs | undefined;
}

/**
 * The signed-in caller a write is made for. A request is authorized when it arrives, but its
 * write may then wait (for a row another transaction holds, for bcrypt): helper 76's
 * administrator, demoted while its writes waited on a locked row, went on promoting, verifying
 * and editing users after the demotion had answered. The write's transaction locks the caller's
 * row with the rows it writes, as every change to an administrator, every logout and every session
 * end locks it, and goes ahead only if the caller's account is still active, the login chain of
 * its session still live and, for an administrator's write, its role still ADMIN. Whichever of
 * the two commits first, the other sees it.
 */
export interface ActingAs {
  userId: number;
  /** The login chain of the caller's session (a refresh meanwhile keeps it). */
  familyId: string;
  /** The write needs the ADMIN role, not only a live session. */
  administrator: boolean;
}

/** How a listing is asked for. */
export interface ListOptions {
  /**
   * Who the listing is made for. A listing is authorized when it arrives, then may wait its turn
   * (LIST_QUERY_CONCURRENCY): helper 88's administrator, demoted, suspended or deleted while 150
   * of its lists waited, was answered pages of users up to 1.8 s after the change had answered.
   * Each is authorized again as it is read: a page of users in its own statement, audit events as they start.
   */
  actingAs?: ActingAs | undefined;
}

/**
 * Refuses the caller of ActingAs unless its account is still active, its login chain still live
 * and, for an administrator's work, its role still ADMIN: the rule a write's guard applies to the
 * caller's locked row, and a listing to the caller's row as it starts.
 */
export function assertStillActing(actingAs: ActingAs, caller: { role: string; status: string } | null | undefined, chainLive: boolean): void {
  if (caller?.status !== 'ACTIVE' || !chainLive) throw new AuthenticationError('Session has ended; please log in again');
  if (actingAs.administrator && caller.role !== 'ADMIN') throw new AuthorizationError('Insufficient permissions');
}

/** Whether the write may repeat an earlier attempt of itself (see WriteOptions). */
export function isRepeat(options: WriteOptions): boolean {
  return options.repeat ?? currentCallContext()?.repeat === true;
}

/** ActingAs as a header value between layers: `<user id> <admin|self> <family id>`. */
export function actingAsToHeader(actingAs: ActingAs): string {
  return `${actingAs.userId} ${actingAs.administrator ? 'admin' : 'self'} ${actingAs.familyId}`;
}

/**
 * The header's ActingAs, or undefined when it is malformed: an id outside the users' INT column,
 * a family id that is no UUID. Only our own layers, holding the internal secret, send it; a value
 * the database would refuse is refused before it is asked (helper 79 had it answer `internal`).
 */
export function actingAsFromHeader(value: string): ActingAs | undefined {
  const match = /^([1-9]\d{0,9}) (admin|self) ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i.exec(value);
  const userId = Number(match?.[1]);
  if (match === null || userId > 2_147_483_647) return undefined;
  return { userId, administrator: match[2] === 'admin', familyId: match[3] ?? '' };
}
