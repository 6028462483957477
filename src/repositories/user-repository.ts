import type { Prisma, PrismaClient, User, UserRole, UserStatus } from '../../gen/prisma/client.ts';
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

export interface UserFilter {
  page: number;
  perPage: number;
  role?: UserRole | undefined;
  status?: UserStatus | undefined;
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
    const where: Prisma.UserWhereInput = {
      ...(filter.role === undefined ? {} : { role: filter.role }),
      ...(filter.status === undefined ? {} : { status: filter.status }),
    };
    const [users, total] = await withDatabaseErrors(() =>
      this.#db.$transaction([
        this.#db.user.findMany({
          where,
          orderBy: { id: 'asc' },
          skip: (filter.page - 1) * filter.perPage,
          take: filter.perPage,
        }),
        this.#db.user.count({ where }),
      ]),
    );
    return { users, total };
  }

  async recordLogin(id: number, at: Date): Promise<void> {
    await withDatabaseErrors(() => this.#db.user.updateMany({ where: { id }, data: { lastLoginAt: at } }));
  }
}

/** What makes a username unique: its lower-case fold (usernames are ASCII letters, digits and _). */
export function usernameKeyOf(username: string): string {
  return username.toLowerCase();
}
