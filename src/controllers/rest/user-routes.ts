import type { IRouter, Request, Response } from 'express';
import type { components, operations } from '../../../gen/openapi/schema.d.ts';
import type { User } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import { ValidationError } from '../../domain/errors.ts';
import { etagOf, sendPage, sendSuccess, sendUser } from './envelope.ts';
import { requireField } from '../../domain/message-mapping.ts';
import { callOptions, requireBearer, type ServiceClients } from './service-call.ts';
import { roleFromRest, statusFromRest, toRestPagination, toRestSession, toRestUser } from './rest-mapping.ts';

type Schemas = components['schemas'];
type ListQuery = NonNullable<operations['listUsers']['parameters']['query']>;

/** The validator has already checked that `userId` is a positive int32. */
const userIdOf = (req: Request): number => Number(req.params.userId);

// Whitespace around list elements is HTTP's OWS: spaces and tabs only (\s would also take a
// non-breaking space, and a bare `*` next to one was the wildcard).
const BARE_WILDCARD = /^[ \t]*\*[ \t]*$/;
/**
 * One element of an entity-tag list and what follows it: its own `,` or the end. An opaque tag may
 * hold a comma (`"a,b"`), so the list is read tag by tag, not split at commas.
 */
const LIST_ELEMENT = /[ \t]*(?:(W\/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*)?(?:,|$)/y;

/**
 * What an If-Match or If-None-Match header names: `'*'` (any representation), or its entity tags;
 * undefined when it is malformed. Only a bare `*`, alone, is the wildcard (RFC 9110:
 * `"*" / #entity-tag`). In a list (`*, "99"`) it used to make a stale write unconditional, and a
 * quoted `"*"` still did: that is an ordinary tag, naming no version.
 */
function entityTags(header: string): '*' | { weak: boolean; opaque: string }[] | undefined {
  if (BARE_WILDCARD.test(header)) return '*';
  const tags: { weak: boolean; opaque: string }[] = [];
  // Empty elements (`"3",`, `, "3"`) are skipped, as RFC 9110 §5.6.1.2 requires of a recipient: a
  // write carrying one was refused with 400, where a read's If-None-Match took it (helper 166).
  LIST_ELEMENT.lastIndex = 0;
  while (LIST_ELEMENT.lastIndex < header.length) {
    const start = LIST_ELEMENT.lastIndex;
    const match = LIST_ELEMENT.exec(header);
    if (match === null || LIST_ELEMENT.lastIndex === start) return undefined;
    if (match[2] !== undefined) tags.push({ weak: match[1] !== undefined, opaque: match[2] });
  }
  return tags.length === 0 ? undefined : tags;
}

/** The largest version a user can have: Version in openapi.yaml and the protos is an int32. */
const MAX_VERSION = 2 ** 31 - 1;

/**
 * What an `If-Match` naming no version a user can have expects: a version no row has (they start
 * at 1; and 0, "one past" it for a repeated write's check, is none either). The write then meets
 * authentication, authorization and the lookup like any other and fails its precondition only
 * after them: a 401, 403 or 404 wins over 412 (RFC 9110 §13.2.1). Refused at once, a bad tag was
 * answered 412 to a caller with no valid token, or no right to the write (helper 87).
 */
const NO_VERSION = -1;

/**
 * The versions `If-Match` names (RFC 9110 §13.1.1): undefined without the header or with `*`.
 * Strong comparison: a weak tag, or one that is not a version, names none; a header naming none
 * matches no user, so the write fails with 412 before anything is written.
 */
function expectedVersionsOf(req: Request): Set<number> | undefined {
  const header = req.get('if-match');
  if (header === undefined) return undefined;
  const tags = entityTags(header);
  if (tags === undefined) throw new ValidationError('Validation failed', { 'If-Match': 'must be an entity tag such as "3", or *' });
  if (tags === '*') return undefined;
  // A tag that names no version a user can have (the contract's Version is an int32) matches
  // nothing, like any other tag that is not one of ours.
  return new Set(
    tags
      .filter((tag) => !tag.weak && /^[1-9][0-9]{0,9}$/.test(tag.opaque))
      .map((tag) => Number(tag.opaque))
      .filter((version) => version <= MAX_VERSION),
  );
}

/** Whether If-None-Match names the user's current tag (weak comparison, RFC 9110 §13.1.2). */
function notModified(req: Request, user: Pick<User, 'version'>): boolean {
  const header = req.get('if-none-match');
  if (header === undefined) return false;
  const tags = entityTags(header) ?? [];
  return tags === '*' || tags.some((tag) => tag.opaque === String(user.version));
}

/**
 * The version a write is to be made at, from its `If-Match` and `If-None-Match` (RFC 9110
 * §13.2.2: If-Match first), or undefined for any. The write compares it itself (`WHERE version =
 * ?`): a condition is never a read followed by an unconditional write. Where the headers do not
 * name one version, the user's current version is read first and the write made at it if the
 * headers hold for it: `If-None-Match` without `If-Match`, and an `If-Match` list of several
 * versions, which matches if any does (it was refused 400, "give one entity tag": helper 136).
 * A change between the read and the write is then a 412 to retry, not a write over a version
 * the headers excluded.
 */
async function writeVersionOf(req: Request, res: Response, users: ServiceClients['users'], userId: number): Promise<number | undefined> {
  const expected = expectedVersionsOf(req);
  const header = req.get('if-none-match');
  let noneMatch: (version: number) => boolean = () => false;
  if (header !== undefined) {
    const tags = entityTags(header);
    if (tags === undefined) throw new ValidationError('Validation failed', { 'If-None-Match': 'must be an entity tag such as "3", or *' });
    if (tags === '*') return NO_VERSION;
    noneMatch = (version) => notModified(req, { version });
  }
  if (expected?.size === 0) return NO_VERSION;
  if (expected?.size === 1) {
    const [version = NO_VERSION] = expected;
    return noneMatch(version) ? NO_VERSION : version;
  }
  if (expected === undefined && header === undefined) return undefined;
  let version: number;
  try {
    version = requireField((await users.getUser({ userId }, callOptions(req, res))).user, 'user').version;
  } catch {
    // A read the caller may not make, or of no such user, is not the write's answer: the write
    // answers (its own 403 or 404 differ: self-only, admin-only), and is not done (helper 124).
    return NO_VERSION;
  }
  return (expected === undefined || expected.has(version)) && !noneMatch(version) ? version : NO_VERSION;
}

/**
 * `/api/v1/users`, on the application's own router: role and ownership rules live in the service
 * layer, shared with RPC. Not a router mounted at the prefix: Express strips a mount's prefix from
 * the URL on the way in and puts it back on the way out, and parses the URL again at every layer
 * after each change (see "Where the time goes" in the README).
 */
export function addUserRoutes(router: IRouter, { users, auth }: ServiceClients): void {
  const at = (path: string) => `/api/v1/users${path}`;

  router.get(at(''), requireBearer, async (req, res) => {
    const query = req.query as unknown as Partial<Record<keyof ListQuery, string>>;
    const page = await users.listUsers(
      {
        page: Number(query.page ?? 1),
        perPage: Number(query.perPage ?? 20),
        ...(query.role === undefined ? {} : { role: roleFromRest(query.role as Schemas['UserRole']) }),
        ...(query.status === undefined ? {} : { status: statusFromRest(query.status as Schemas['UserStatus']) }),
        ...(query.q === undefined ? {} : { q: query.q }),
        ...(query.sort === undefined ? {} : { sort: query.sort }),
      },
      callOptions(req, res),
    );
    sendPage(res, page.users.map(toRestUser), toRestPagination(requireField(page.pagination, 'pagination')));
  });

  router.post(at(''), requireBearer, async (req, res) => {
    const body = req.body as Schemas['CreateUserRequest'];
    const { role, ...rest } = body;
    const { user } = await users.createUser({ ...rest, ...(role === undefined ? {} : { role: roleFromRest(role) }) }, callOptions(req, res, { idempotent: true }));
    sendSuccess(res, toRestUser(requireField(user, 'user')), 'User created successfully', 201);
  });

  router.get(at('/:userId'), requireBearer, async (req, res) => {
    const user = requireField((await users.getUser({ userId: userIdOf(req) }, callOptions(req, res))).user, 'user');
    if (notModified(req, user)) {
      res.setHeader('etag', etagOf(user));
      res.status(304).end();
      return;
    }
    sendUser(res, user, 'User retrieved successfully');
  });

  router.put(at('/:userId'), requireBearer, async (req, res) => {
    const body = req.body as Schemas['UpdateUserRequest'];
    const userId = userIdOf(req);
    const { user } = await users.updateUser({ ...body, userId, expectedVersion: await writeVersionOf(req, res, users, userId) }, callOptions(req, res));
    sendUser(res, requireField(user, 'user'), 'User updated successfully');
  });

  router.delete(at('/:userId'), requireBearer, async (req, res) => {
    const userId = userIdOf(req);
    await users.deleteUser({ userId, expectedVersion: await writeVersionOf(req, res, users, userId) }, callOptions(req, res));
    sendSuccess(res, null, 'User deleted successfully');
  });

  router.put(at('/:userId/password'), requireBearer, async (req, res) => {
    const body = req.body as Schemas['ChangePasswordRequest'];
    const userId = userIdOf(req);
    await users.changePassword({ ...body, userId, expectedVersion: await writeVersionOf(req, res, users, userId) }, callOptions(req, res));
    sendSuccess(res, null, 'Password changed successfully');
  });

  router.post(at('/:userId/verify'), requireBearer, async (req, res) => {
    const userId = userIdOf(req);
    const { user } = await users.verifyUser({ userId, expectedVersion: await writeVersionOf(req, res, users, userId) }, callOptions(req, res));
    sendUser(res, requireField(user, 'user'), 'User verified successfully');
  });

  router.put(at('/:userId/status'), requireBearer, async (req, res) => {
    const body = req.body as Schemas['UpdateUserStatusRequest'];
    const userId = userIdOf(req);
    const request = { userId, status: statusFromRest(body.status), expectedVersion: await writeVersionOf(req, res, users, userId) };
    const { user } = await users.updateUserStatus(request, callOptions(req, res));
    sendUser(res, requireField(user, 'user'), 'User status updated successfully');
  });

  router.put(at('/:userId/role'), requireBearer, async (req, res) => {
    const body = req.body as Schemas['UpdateUserRoleRequest'];
    const userId = userIdOf(req);
    const request = { userId, role: roleFromRest(body.role), expectedVersion: await writeVersionOf(req, res, users, userId) };
    const { user } = await users.updateUserRole(request, callOptions(req, res));
    sendUser(res, requireField(user, 'user'), 'User role updated successfully');
  });

  router.get(at('/:userId/sessions'), requireBearer, async (req, res) => {
    const { sessions } = await auth.listUserSessions({ userId: userIdOf(req) }, callOptions(req, res));
    sendSuccess(res, sessions.map(toRestSession), 'Sessions retrieved successfully');
  });

  router.delete(at('/:userId/sessions'), requireBearer, async (req, res) => {
    const { endedCount } = await auth.endUserSessions({ userId: userIdOf(req) }, callOptions(req, res));
    sendSuccess(res, { endedCount }, 'Sessions ended');
  });

  router.delete(at('/:userId/sessions/:sessionId'), requireBearer, async (req, res) => {
    await auth.endUserSession({ userId: userIdOf(req), sessionId: Number(req.params.sessionId) }, callOptions(req, res));
    sendSuccess(res, null, 'Session ended');
  });

  router.delete(at('/:userId/login-failures'), requireBearer, async (req, res) => {
    const { clearedCount } = await users.clearLoginFailures({ userId: userIdOf(req) }, callOptions(req, res));
    sendSuccess(res, { clearedCount }, 'Login failures cleared');
  });
}
