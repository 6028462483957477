import { Prisma, type PrismaClient, type User, type UserRole, type UserStatus } from '../../gen/prisma/client.ts';
import { withDatabaseErrors } from './prisma-errors.ts';

export type NewUser = Pick<
  Prisma.UserCreateInput,
  'username' | 'email' | 'passwordHash' | 'firstName' | 'lastName' | 'phone' | 'role'
>;

/** Fields the service layer may change; self-service and admin paths choose which. */
export type UserChanges = Pick<
  Prisma.UserUpdateInput,
  'email' | 'firstName' | 'lastName' | 'phone' | 'avatarUrl' | 'passwordHash' | 'isVerified' | 'status' | 'isActive'
>;

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
  create(user: NewUser): Promise<User>;
  /** Applies the changes; NotFoundError when the user does not exist. */
  update(id: number, changes: UserChanges): Promise<User>;
  /** Deletes the user and, by cascade, its sessions; false when there was no such user. */
  delete(id: number): Promise<boolean>;
  list(filter: UserFilter): Promise<{ users: User[]; total: number }>;
  recordLogin(id: number, at: Date): Promise<void>;
}

export class PrismaUserRepository implements UserRepository {
  readonly #db: PrismaClient;

  constructor(db: PrismaClient) {
    this.#db = db;
  }

  findById(id: number): Promise<User | null> {
    return withDatabaseErrors(() => this.#db.user.findUnique({ where: { id } }));
  }

  findProfile(id: number): Promise<UserProfile | null> {
    return withDatabaseErrors(() => this.#db.user.findUnique({ where: { id }, omit: { passwordHash: true } }));
  }

  findByLogin(usernameOrEmail: string): Promise<User | null> {
    // Usernames cannot contain '@', so the login's shape says which unique column to search.
    // Both are compared without regard to case: e-mails are stored lower-cased, usernames by
    // their lower-case key.
    const folded = usernameOrEmail.toLowerCase();
    const where = folded.includes('@') ? { email: folded } : { usernameKey: folded };
    return withDatabaseErrors(() => this.#db.user.findUnique({ where }));
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

  create(user: NewUser): Promise<User> {
    return withDatabaseErrors(() => this.#db.user.create({ data: { ...user, usernameKey: usernameKeyOf(user.username) } }));
  }

  update(id: number, changes: UserChanges): Promise<User> {
    return withDatabaseErrors(() => this.#db.user.update({ where: { id }, data: changes }));
  }

  async delete(id: number): Promise<boolean> {
    const { count } = await withDatabaseErrors(() => this.#db.user.deleteMany({ where: { id } }));
    return count > 0;
  }

  async list(filter: UserFilter): Promise<{ users: User[]; total: number }> {
    const where = listWhere(filter);
    // One statement: the count of the whole listing, with the page joined to it. The count is
    // an aggregate of its own (an index-only scan when it can be) rather than `count(*) OVER ()`
    // beside the page, which would read every matching row in full to count them: at 100k users
    // 16 ms against 196 ms (README, Performance). A page past the end is the count's row alone,
    // its user columns NULL.
    const rows = await withDatabaseErrors(() =>
      this.#db.$queryRaw<(User & { total: number })[]>`
        SELECT "page".*, "counted"."total"
        FROM (SELECT count(*)::int AS "total" FROM "users" ${where}) AS "counted"
        LEFT JOIN LATERAL (
          SELECT ${USER_COLUMNS} FROM "users" ${where}
          ORDER BY ${LIST_ORDER[filter.sort ?? 'id']}
          LIMIT ${filter.perPage} OFFSET ${(filter.page - 1) * filter.perPage}
        ) AS "page" ON true`,
    );
    const total = rows[0]?.total ?? 0;
    if (rows.length === 1 && rows[0]!.id === null) return { users: [], total };
    for (const row of rows) delete (row as Partial<typeof row>).total;
    return { users: rows, total };
  }

  async recordLogin(id: number, at: Date): Promise<void> {
    await withDatabaseErrors(() => this.#db.user.updateMany({ where: { id }, data: { lastLoginAt: at } }));
  }
}

/** What makes a username unique: its lower-case fold (usernames are ASCII letters, digits and _). */
export function usernameKeyOf(username: string): string {
  return username.toLowerCase();
}

/** Every column of `users` under its Prisma field name (columns are the fields in snake_case). */
const USER_COLUMNS = Prisma.raw(
  Object.values(Prisma.UserScalarFieldEnum)
    .map((field) => `"${field.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`)}" AS "${field}"`)
    .join(', '),
);

/** Each sort as the index it walks (see the …_user_list_search migration); `id` breaks ties. */
const LIST_ORDER: Record<UserSort, Prisma.Sql> = {
  id: Prisma.sql`"id"`,
  createdAt: Prisma.sql`"created_at", "id"`,
  '-createdAt': Prisma.sql`"created_at" DESC, "id" DESC`,
  lastLoginAt: Prisma.sql`"last_login_at" NULLS FIRST, "id"`,
  '-lastLoginAt': Prisma.sql`"last_login_at" DESC NULLS LAST, "id" DESC`,
};

/** The filters as a WHERE clause with only the conditions asked for, so the planner sees them. */
function listWhere(filter: UserFilter): Prisma.Sql {
  const conditions: Prisma.Sql[] = [];
  if (filter.role !== undefined) conditions.push(Prisma.sql`"role" = ${filter.role}::"UserRole"`);
  if (filter.status !== undefined) conditions.push(Prisma.sql`"status" = ${filter.status}::"UserStatus"`);
  if (filter.q !== undefined && filter.q !== '') {
    // A prefix in LIKE's syntax, its own wildcards escaped; matched against the lower-case
    // expressions that have text_pattern_ops indexes.
    const prefix = `${filter.q.toLowerCase().replace(/[\\%_]/g, (char) => `\\${char}`)}%`;
    conditions.push(
      Prisma.sql`(lower("username") LIKE ${prefix} OR lower("email") LIKE ${prefix} OR lower("first_name") LIKE ${prefix} OR lower("last_name") LIKE ${prefix})`,
    );
  }
  return conditions.length === 0 ? Prisma.empty : Prisma.sql`WHERE ${Prisma.join(conditions, ' AND ')}`;
}
