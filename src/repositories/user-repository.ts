import { ALL_ADMINS, type RowTurns } from './row-turns.ts';
import { Prisma, type PrismaClient, type User, type UserRole, type UserStatus } from '../../gen/prisma/client.ts';
import { ConflictError, LastAdminError, NotFoundError, PreconditionFailedError } from '../domain/errors.ts';
import { foldCase } from '../domain/user-mapping.ts';
import type { Database } from '../infrastructure/database/database.ts';
import type { SqlDialect } from '../infrastructure/database/dialect.ts';
import type { RawReader } from '../infrastructure/database/raw-reader.ts';
import type { WorkGate } from '../infrastructure/work-gate.ts';
import { admitList } from './list-admission.ts';
import { withDatabaseErrors } from './prisma-errors.ts';
import { assertStillActing, isRepeat, storeAuditEventWith, type ActingAs, type ListOptions, type WriteOptions } from './write-options.ts';

export type { ActingAs, ListOptions, WriteOptions } from './write-options.ts';

export type NewUser = Pick<Prisma.UserCreateInput, 'username' | 'email' | 'passwordHash' | 'firstName' | 'lastName' | 'phone' | 'role'>;

/** Fields the service layer may change; self-service and admin paths choose which. */
export type UserChanges = Pick<Prisma.UserUpdateInput, 'email' | 'firstName' | 'lastName' | 'phone' | 'avatarUrl' | 'passwordHash' | 'isVerified' | 'status' | 'isActive' | 'role'>;

/**
 * What a conditional write expects the row to be like; the comparison is part of the write's own
 * WHERE clause, so two writers that read the same row cannot both succeed. Absent fields are not
 * checked.
 */
export interface UserExpectation {
  version?: number | undefined;
  isVerified?: boolean | undefined;
  status?: UserStatus | undefined;
  role?: UserRole | undefined;
  /** The hash a password change compared the current password with. */
  passwordHash?: string | undefined;
}

/** Orders of the user listing: a field, ascending, or descending with a leading `-`. */
export const USER_SORTS = ['id', 'createdAt', '-createdAt', 'lastLoginAt', '-lastLoginAt'] as const;
export type UserSort = (typeof USER_SORTS)[number];

export interface UserFilter {
  page: number;
  perPage: number;
  role?: UserRole | undefined;
  status?: UserStatus | undefined;
  /**
   * Users whose username, e-mail, first or last name starts with this text, ignoring case.
   * `%` and `_` are matched literally.
   */
  q?: string | undefined;
  /** `id` when absent. */
  sort?: UserSort | undefined;
}

/** A user row without its password hash: what every read that does not check a password uses. */
export type UserProfile = Omit<User, 'passwordHash'>;

/** Persistence of user accounts. Rows include the password hash; services never pass it on. */
export interface UserRepository {
  /** The full row, password hash included: only for checking a password. */
  findById(id: number): Promise<User | null>;
  /** The row without the hash; safe to cache. */
  findProfile(id: number): Promise<UserProfile | null>;
  findByLogin(usernameOrEmail: string): Promise<User | null>;
  /** Which of the given username and e-mail are taken (e-mails are stored lower-cased). */
  findTaken(username: string | undefined, email: string | undefined, exceptId?: number): Promise<{ username: boolean; email: boolean }>;
  /** Inserts the user; with `options.actingAs`, only while that caller may still (see ActingAs). */
  create(user: NewUser, options?: WriteOptions): Promise<User>;
  /**
   * Applies the changes and increments the version, only if the row still matches `expected`:
   * NotFoundError when there is no such user, PreconditionFailedError when its version differs,
   * ConflictError when another expected field does, LastAdminError when the change would leave
   * no active administrator, and the errors of ActingAs when `options.actingAs` may no longer.
   */
  update(id: number, changes: UserChanges, expected?: UserExpectation, options?: WriteOptions): Promise<User>;
  /**
   * Deletes the user and, by cascade, its sessions; false when there was no such user. The same
   * version, last-administrator and caller conditions as update.
   */
  delete(id: number, expectedVersion?: number, options?: WriteOptions): Promise<boolean>;
  /** A page of profiles: a listing never carries password hashes. With `options.actingAs`, only while that caller may still. */
  list(filter: UserFilter, options?: ListOptions): Promise<{ users: UserProfile[]; total: number }>;
}

export class PrismaUserRepository implements UserRepository {
  readonly #db: PrismaClient;
  readonly #dialect: SqlDialect;
  readonly #readRows: RawReader;
  readonly #orders: Record<UserSort, Prisma.Sql>;
  readonly #listText: ListText;
  readonly #lists: WorkGate | undefined;
  readonly #turns: RowTurns | undefined;

  /**
   * `lists`: the admission gate of this process's listings (see admitList); `turns`: the
   * process's turns at user rows, shared with its token repository (see RowTurns).
   */
  constructor({ prisma, dialect, readRows }: Pick<Database, 'prisma' | 'dialect' | 'readRows'>, lists?: WorkGate, turns?: RowTurns) {
    this.#db = prisma;
    this.#lists = lists;
    this.#turns = turns;
    this.#dialect = dialect;
    this.#readRows = readRows;
    this.#orders = listOrders(dialect);
    this.#listText = listText(dialect);
  }

  findById(id: number): Promise<User | null> {
    return withDatabaseErrors(() => this.#db.user.findUnique({ where: { id } }));
  }

  findProfile(id: number): Promise<UserProfile | null> {
    return withDatabaseErrors(() => this.#db.user.findUnique({ where: { id }, omit: { passwordHash: true } }));
  }

  async findByLogin(usernameOrEmail: string): Promise<User | null> {
    // Usernames cannot contain '@', so the login's shape says which unique column to search.
    // Both are compared without regard to case: e-mails are stored lower-cased, usernames by
    // their lower-case key.
    // The row must hold exactly that text: MySQL's utf8mb4_unicode_ci collation would also find
    // `ádmin`, `admin ` (trailing spaces), `admin` with a zero-width space or in fullwidth letters.
    const folded = foldCase(usernameOrEmail);
    const byEmail = folded.includes('@');
    const row = await withDatabaseErrors(() => this.#db.user.findUnique({ where: byEmail ? { email: folded } : { usernameKey: folded } }));
    return row !== null && (byEmail ? row.email : row.usernameKey) === folded ? row : null;
  }

  async findTaken(username: string | undefined, email: string | undefined, exceptId?: number) {
    const or: Prisma.UserWhereInput[] = [];
    if (username !== undefined) or.push({ usernameKey: usernameKeyOf(username) });
    if (email !== undefined) or.push({ email });
    if (or.length === 0) return { username: false, email: false };
    const rows = await withDatabaseErrors(() =>
      this.#db.user.findMany({
        where: { OR: or, ...(exceptId === undefined ? {} : { NOT: { id: exceptId } }) },
        select: { usernameKey: true, email: true },
      }),
    );
    return {
      username: username !== undefined && rows.some((row) => row.usernameKey === usernameKeyOf(username)),
      email: email !== undefined && rows.some((row) => row.email === email),
    };
  }

  create(user: NewUser, options: WriteOptions = {}): Promise<User> {
    const data = { ...user, usernameKey: usernameKeyOf(user.username) };
    const { actingAs, audit } = options;
    return withDatabaseErrors(() => {
      if (actingAs === undefined && audit === undefined) return this.#db.user.create({ data });
      const guards = { lastAdmin: false, actingAs };
      return this.#atRows(undefined, alsoGuarded(guards), () =>
        this.#db.$transaction(async (tx) => {
          await guardWrite(tx, undefined, guards);
          const row = await tx.user.create({ data });
          await storeAuditEventWith(tx, audit === undefined ? undefined : { ...audit, userId: row.id });
          return row;
        }),
      );
    });
  }

  update(id: number, changes: UserChanges, expected: UserExpectation = {}, options: WriteOptions = {}): Promise<User> {
    const repeat = isRepeat(options);
    const guards = { lastAdmin: removesActiveAdmin(changes), actingAs: options.actingAs };
    return this.#atRows(id, alsoGuarded(guards), () =>
      withDatabaseErrors(() => {
        if (!guards.lastAdmin && guards.actingAs === undefined && options.audit === undefined) return conditionalUpdate(this.#db, this.#dialect, id, changes, expected, repeat);
        return this.#db.$transaction(async (tx) => {
          await guardWrite(tx, id, guards);
          const row = await conditionalUpdate(tx, this.#dialect, id, changes, expected, repeat);
          await storeAuditEventWith(tx, options.audit);
          return row;
        });
      }),
    );
  }

  delete(id: number, expectedVersion?: number, options: WriteOptions = {}): Promise<boolean> {
    const guards = { lastAdmin: true, actingAs: options.actingAs };
    return this.#atRows(id, alsoGuarded(guards), () =>
      withDatabaseErrors(() =>
        this.#db.$transaction(async (tx) => {
          await guardWrite(tx, id, guards);
          const { count } = await tx.user.deleteMany({ where: { id, ...definedOnly({ version: expectedVersion }) } });
          if (count > 0) {
            await storeAuditEventWith(tx, options.audit);
            return true;
          }
          if (expectedVersion === undefined) return false;
          const error = await whyNotWritten(tx, id, { version: expectedVersion });
          if (error instanceof NotFoundError) return false;
          throw error;
        }),
      ),
    );
  }

  /** A write that locks users' rows, in the rows' turns in this process (see RowTurns). */
  #atRows<T>(target: number | undefined, also: readonly number[], write: () => Promise<T>): Promise<T> {
    return this.#turns === undefined ? write() : this.#turns.run(target, also, write);
  }

  async list(filter: UserFilter, options: ListOptions = {}): Promise<{ users: UserProfile[]; total: number }> {
    const { actingAs } = options;
    const where = listWhere(filter, this.#dialect);
    const text = this.#listText;
    // One statement: the count of the whole listing, with the page joined to it. The count is
    // an aggregate of its own (an index-only scan when it can be) rather than `count(*) OVER ()`
    // beside the page, which would read every matching row in full to count them: at 100k users
    // 16 ms against 196 ms (README, Performance). A page past the end is the count's row alone,
    // its user columns NULL. It is sent past Prisma's query engine, which cost a tenth of the
    // page's CPU (raw-reader.ts). With a caller (ActingAs), the statement also reads the caller's
    // role if its account is active and its login chain live, so the listing is authorized again
    // by its own snapshot, however long it waited its turn (see ListOptions), at no round trip.
    const caller =
      actingAs === undefined
        ? Prisma.empty
        : Prisma.sql`${text.callerById}${actingAs.userId}${text.callerSessionOf}${actingAs.userId}${text.callerChain}${this.#dialect.uuid(actingAs.familyId)}${text.callerLiveAfter}${new Date()}${text.callerEnd}`;
    const rows = await withDatabaseErrors(() =>
      admitList(
        this.#lists,
        () =>
          // MySQL's BOOLEAN is the TINYINT it is (0/1) in raw rows; Prisma's models carry booleans.
          this.#readRows<
            Omit<UserProfile, 'isVerified' | 'isActive'> & { isVerified: boolean | number; isActive: boolean | number; total: number | bigint; callerRole?: string | null }
          >(
            Prisma.sql`${text.select}${caller} FROM ${this.#dialect.joinPageToCount(
              Prisma.sql`${text.count}${where}${text.countEnd}`,
              Prisma.sql`${text.page}${where} ORDER BY ${this.#orders[filter.sort ?? 'id']} LIMIT ${filter.perPage} OFFSET ${(filter.page - 1) * filter.perPage})`,
            )}`,
          ),
        actingAs?.userId,
      ),
    );
    if (actingAs !== undefined) {
      const role = rows[0]?.callerRole ?? null;
      assertStillActing(actingAs, role === null ? null : { role, status: 'ACTIVE' }, role !== null);
    }
    // count(*) is a bigint in both dialects; a listing's size fits a number.
    const total = Number(rows[0]?.total ?? 0);
    // Typed as User rows above, but the count's row alone has a NULL id.
    const first: { id: number | null } | undefined = rows[0];
    if (rows.length === 1 && first?.id === null) return { users: [], total };
    // One copy of each row, without the count and the caller's role (the rest is a new object).
    const users = rows.map(({ total: _total, callerRole: _callerRole, ...row }): UserProfile => {
      const profile = row as UserProfile;
      profile.isVerified = Boolean(row.isVerified);
      profile.isActive = Boolean(row.isActive);
      return profile;
    });
    return { users, total };
  }
}

/** What makes a username unique: its lower-case fold (usernames are ASCII letters, digits and _). */
export function usernameKeyOf(username: string): string {
  return foldCase(username);
}

type Tx = Prisma.TransactionClient | PrismaClient;

/** Whether a change takes a user out of the ACTIVE ADMINs (if it is one). */
export function removesActiveAdmin(changes: UserChanges): boolean {
  return (changes.status !== undefined && changes.status !== 'ACTIVE') || (changes.role !== undefined && changes.role !== 'ADMIN');
}

/**
 * Locks the rows a write depends on, in one statement, and refuses the write when it may not go
 * ahead. Must run first inside the transaction that then writes (MySQL fixes a transaction's
 * snapshot at its first plain read; the caller's sessions are read after the lock).
 *
 * `lastAdmin`: refuses to take user `id` out of the active administrators when it is the last
 * one. The rows of every active admin are locked (FOR UPDATE), so concurrent changes to admins
 * queue here: two admins suspending each other in parallel cannot both see the other still
 * active. (PostgreSQL re-checks a locked row's WHERE after the lock is granted, so the second sees
 * the first one's change.)
 *
 * `actingAs`: refuses the write unless the caller may still make it (see ActingAs). Its row is
 * the lock that every change to an administrator (this same guard), every logout and session end
 * (TokenRepository's user lock) and every refresh takes, so what it reads next is settled until
 * this transaction ends.
 *
 * The target's row is locked by the same statement, and all of them in id order: when the target
 * was locked afterwards, by the write, and the admins in scan order, two guards could each hold a
 * row the other wanted, and PostgreSQL ended one with a deadlock (a 500, found by an attacker
 * firing mixed admin writes in parallel).
 */
export async function guardWrite(tx: Prisma.TransactionClient, id: number | undefined, guards: WriteGuards): Promise<void> {
  const { lastAdmin, actingAs } = guards;
  const ids = [id, actingAs?.userId].filter((value): value is number => value !== undefined);
  if (!lastAdmin && ids.length === 0) return;
  const named = ids.length === 0 ? Prisma.sql`FALSE` : Prisma.sql`id IN (${Prisma.join(ids)})`;
  const rows = lastAdmin
    ? await tx.$queryRaw<LockedUser[]>`SELECT id, role, status FROM users WHERE (role = 'ADMIN' AND status = 'ACTIVE') OR ${named} ORDER BY id FOR UPDATE`
    : await tx.$queryRaw<LockedUser[]>`SELECT id, role, status FROM users WHERE ${named} ORDER BY id FOR UPDATE`;
  if (actingAs !== undefined) {
    const caller = rows.find((row) => row.id === actingAs.userId);
    assertStillActing(actingAs, caller, caller?.status === 'ACTIVE' && (await chainIsLive(tx, actingAs)));
  }
  if (lastAdmin) {
    const admins = rows.filter((row) => row.role === 'ADMIN' && row.status === 'ACTIVE');
    if (admins.length === 1 && admins[0]?.id === id) throw new LastAdminError();
  }
}

/** What guardWrite checks, and so which rows it locks. */
export interface WriteGuards {
  lastAdmin: boolean;
  actingAs: ActingAs | undefined;
}

/** The rows guardWrite locks besides its target, as RowTurns keys: the caller's, every administrator's. */
export function alsoGuarded(guards: WriteGuards): number[] {
  const rows = guards.actingAs === undefined ? [] : [guards.actingAs.userId];
  return guards.lastAdmin ? [...rows, ALL_ADMINS] : rows;
}

/** Whether the caller's login chain still has a live session. */
function chainIsLive(db: Tx, actingAs: ActingAs): Promise<boolean> {
  return db.oAuthToken
    .findFirst({ where: { userId: actingAs.userId, familyId: actingAs.familyId, isRevoked: false, expiresAt: { gt: new Date() } }, select: { id: true } })
    .then((row) => row !== null);
}

/**
 * Authorizes a listing's caller again as it starts, however long it waited its turn (see
 * ListOptions): its row and login chain as they are now.
 */
export async function recheckLister(db: Tx, actingAs: ActingAs): Promise<void> {
  const caller = await db.user.findUnique({ where: { id: actingAs.userId }, select: { role: true, status: true } });
  assertStillActing(actingAs, caller, caller?.status === 'ACTIVE' && (await chainIsLive(db, actingAs)));
}

/** A row as guardWrite locks it. */
interface LockedUser {
  id: number;
  role: string;
  status: string;
}

/**
 * UPDATE users SET …, version = version + 1 WHERE id = ? AND <expected>: one check-and-write, so
 * there is no window between the check and the write (the dialect makes it so on MySQL too).
 * `db` may be a transaction of the caller's (the token repository's session-ending writes).
 */
export async function conditionalUpdate(db: Tx, dialect: SqlDialect, id: number, changes: UserChanges, expected: UserExpectation, repeat: boolean): Promise<User> {
  const written = await dialect.updateUserIf(db, id, definedOnly(expected), { ...changes, version: { increment: 1 } });
  if (written !== null) return written;
  if (repeat) {
    const row = await db.user.findUnique({ where: { id } });
    if (row !== null && showsWrite(row, changes, expected)) return row;
  }
  throw await whyNotWritten(db, id, expected);
}

/**
 * Whether `row` is what the conditional write of `changes` over `expected` left: each change in
 * place and, when a version was expected, the version one past it. A change that is an
 * operation rather than a value (an increment) can never be shown to be done.
 */
export function showsWrite(row: User, changes: UserChanges, expected: UserExpectation): boolean {
  if (expected.version !== undefined && row.version !== expected.version + 1) return false;
  return Object.entries(changes).every(([field, value]: [string, unknown]) => {
    // An absent change is no change (Prisma skips it); a value, null included, is in place or
    // not; an operation object cannot be checked.
    if (value === undefined) return true;
    return (value === null || typeof value !== 'object') && row[field as keyof User] === value;
  });
}

/**
 * Why a conditional write matched no row, read after the fact (the write itself decided; this
 * only names the reason): no such user, another version, or another state than expected.
 */
async function whyNotWritten(db: Tx, id: number, expected: UserExpectation): Promise<Error> {
  const row = await db.user.findUnique({ where: { id }, select: { version: true, isVerified: true, status: true, role: true, passwordHash: true } });
  if (row === null) return new NotFoundError('User not found');
  if (expected.version !== undefined && row.version !== expected.version) return new PreconditionFailedError();
  if (expected.isVerified !== undefined && row.isVerified !== expected.isVerified) {
    return new ConflictError(row.isVerified ? 'User is already verified' : 'User is not verified');
  }
  if (expected.status !== undefined && row.status !== expected.status) {
    return new ConflictError(`The user's status changed meanwhile (now ${row.status}); read it again and retry`);
  }
  if (expected.role !== undefined && row.role !== expected.role) {
    return new ConflictError(`The user's role changed meanwhile (now ${row.role}); read it again and retry`);
  }
  if (expected.passwordHash !== undefined && row.passwordHash !== expected.passwordHash) {
    return new ConflictError('The password was changed meanwhile; nothing was changed');
  }
  return new ConflictError('The user changed meanwhile; read it again and retry');
}

/** The object without its undefined members, as Prisma's `where` must not filter on them. */
function definedOnly<T extends object>(object: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}

/**
 * Every column of `users` but the password hash, under its Prisma field name (columns are the
 * fields in snake_case).
 */
function profileColumns(dialect: SqlDialect): Prisma.Sql {
  return Prisma.raw(
    Object.values(Prisma.UserScalarFieldEnum)
      .filter((field) => field !== Prisma.UserScalarFieldEnum.passwordHash)
      .map((field) => `${dialect.identifier(field.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`))} AS ${dialect.identifier(field)}`)
      .join(', '),
  );
}

/** Each sort as the index it walks (see the …_user_list_search migrations); `id` breaks ties. */
function listOrders(dialect: SqlDialect): Record<UserSort, Prisma.Sql> {
  const id = dialect.identifier('id');
  const createdAt = dialect.identifier('created_at');
  return {
    id: Prisma.raw(id),
    createdAt: Prisma.raw(`${createdAt}, ${id}`),
    '-createdAt': Prisma.raw(`${createdAt} DESC, ${id} DESC`),
    lastLoginAt: Prisma.raw(`${dialect.nullsLowest('last_login_at', 'ASC')}, ${id}`),
    '-lastLoginAt': Prisma.raw(`${dialect.nullsLowest('last_login_at', 'DESC')}, ${id} DESC`),
  };
}

/**
 * The constant text of the listing's statement (see list), between the values a listing binds:
 * built once, where composing it from its identifiers was about a tenth of a page's garbage.
 */
interface ListText {
  select: Prisma.Sql;
  callerById: Prisma.Sql;
  callerSessionOf: Prisma.Sql;
  callerChain: Prisma.Sql;
  callerLiveAfter: Prisma.Sql;
  callerEnd: Prisma.Sql;
  count: Prisma.Sql;
  countEnd: Prisma.Sql;
  page: Prisma.Sql;
}

function listText(dialect: SqlDialect): ListText {
  const q = (name: string) => dialect.identifier(name);
  const columns = profileColumns(dialect).text;
  return {
    select: Prisma.raw(`SELECT ${q('page')}.*, ${q('counted')}.${q('total')}`),
    callerById: Prisma.raw(`, (SELECT ${q('caller')}.${q('role')} FROM ${q('users')} ${q('caller')} WHERE ${q('caller')}.${q('id')} = `),
    callerSessionOf: Prisma.raw(
      ` AND ${q('caller')}.${q('status')} = 'ACTIVE' AND EXISTS (SELECT 1 FROM ${q('oauth_tokens')} ${q('session')} WHERE ${q('session')}.${q('user_id')} = `,
    ),
    callerChain: Prisma.raw(` AND ${q('session')}.${q('family_id')} = `),
    callerLiveAfter: Prisma.raw(` AND ${q('session')}.${q('is_revoked')} = FALSE AND ${q('session')}.${q('expires_at')} > `),
    callerEnd: Prisma.raw(`)) AS ${q('callerRole')}`),
    count: Prisma.raw(`(SELECT count(*) AS ${q('total')} FROM ${q('users')} `),
    countEnd: Prisma.raw(`) AS ${q('counted')}`),
    page: Prisma.raw(`(SELECT ${columns} FROM ${q('users')} `),
  };
}

/** The filters as a WHERE clause with only the conditions asked for, so the planner sees them. */
function listWhere(filter: UserFilter, dialect: SqlDialect): Prisma.Sql {
  const conditions: Prisma.Sql[] = [];
  if (filter.role !== undefined) conditions.push(dialect.enumEquals('role', 'UserRole', filter.role));
  if (filter.status !== undefined) conditions.push(dialect.enumEquals('status', 'UserStatus', filter.status));
  if (filter.q !== undefined && filter.q !== '') {
    // A prefix in LIKE's syntax, its own wildcards escaped; how case is ignored, and which
    // indexes serve it, is the dialect's.
    const prefix = `${filter.q.replace(/[\\%_]/g, (char) => `\\${char}`)}%`;
    const columns = ['username', 'email', 'first_name', 'last_name'].map((column) => dialect.startsWithIgnoringCase(column, prefix));
    conditions.push(Prisma.sql`(${Prisma.join(columns, ' OR ')})`);
  }
  return conditions.length === 0 ? Prisma.empty : Prisma.sql`WHERE ${Prisma.join(conditions, ' AND ')}`;
}
