import { Router, type Request } from 'express';
import type { components, operations } from '../../../gen/openapi/schema.d.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import type { UserService } from '../../services/user-use-cases.ts';
import { requireAuth } from './auth-middleware.ts';
import { sendPage, sendSuccess } from './envelope.ts';
import { actorOf } from './request-context.ts';
import { roleFromRest, statusFromRest, toRestPagination, toRestUser } from './rest-mapping.ts';

type Schemas = components['schemas'];
type ListQuery = NonNullable<operations['listUsers']['parameters']['query']>;

/** The validator has already checked that `userId` is a positive int32. */
const userIdOf = (req: Request): number => Number(req.params.userId);

/** `/api/v1/users`: role and ownership rules live in UserUseCases, shared with RPC. */
export function createUserRoutes(users: UserService, auth: AuthService): Router {
  const router = Router();
  router.use(requireAuth(auth));

  router.get('/', async (req, res) => {
    const query = req.query as unknown as Partial<Record<keyof ListQuery, string>>;
    const page = await users.list(actorOf(res), {
      page: Number(query.page ?? 1),
      perPage: Number(query.perPage ?? 20),
      ...(query.role === undefined ? {} : { role: roleFromRest(query.role as Schemas['UserRole']) }),
      ...(query.status === undefined ? {} : { status: statusFromRest(query.status as Schemas['UserStatus']) }),
      ...(query.q === undefined ? {} : { q: query.q }),
      ...(query.sort === undefined ? {} : { sort: query.sort }),
    });
    sendPage(res, page.users.map(toRestUser), toRestPagination(page.pagination));
  });

  router.post('/', async (req, res) => {
    const body = req.body as Schemas['CreateUserRequest'];
    const { role, ...rest } = body;
    const user = await users.create(actorOf(res), { ...rest, ...(role === undefined ? {} : { role: roleFromRest(role) }) });
    sendSuccess(res, toRestUser(user), 'User created successfully', 201);
  });

  router.get('/:userId', async (req, res) => {
    const user = await users.get(actorOf(res), userIdOf(req));
    sendSuccess(res, toRestUser(user), 'User retrieved successfully');
  });

  router.put('/:userId', async (req, res) => {
    const body = req.body as Schemas['UpdateUserRequest'];
    const user = await users.update(actorOf(res), { ...body, userId: userIdOf(req) });
    sendSuccess(res, toRestUser(user), 'User updated successfully');
  });

  router.delete('/:userId', async (req, res) => {
    await users.delete(actorOf(res), userIdOf(req));
    sendSuccess(res, null, 'User deleted successfully');
  });

  router.put('/:userId/password', async (req, res) => {
    const body = req.body as Schemas['ChangePasswordRequest'];
    await users.changePassword(actorOf(res), { ...body, userId: userIdOf(req) });
    sendSuccess(res, null, 'Password changed successfully');
  });

  router.post('/:userId/verify', async (req, res) => {
    const user = await users.verify(actorOf(res), userIdOf(req));
    sendSuccess(res, toRestUser(user), 'User verified successfully');
  });

  router.put('/:userId/status', async (req, res) => {
    const body = req.body as Schemas['UpdateUserStatusRequest'];
    const user = await users.updateStatus(actorOf(res), userIdOf(req), statusFromRest(body.status));
    sendSuccess(res, toRestUser(user), 'User status updated successfully');
  });

  router.delete('/:userId/login-failures', async (req, res) => {
    const clearedCount = await users.clearLoginFailures(actorOf(res), userIdOf(req));
    sendSuccess(res, { clearedCount }, 'Login failures cleared');
  });

  return router;
}
