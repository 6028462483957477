// The bare ceilings the application is compared with: node:http and pg with nothing else (no
// framework, authentication, validation, cache or envelope), each route doing the least work that
// answers the same question as the API:
//
//   GET  /users/:id                  point read: the one query the app's repository makes for a profile
//   GET  /users?page=P&perPage=N     page: the page and its total in one query
//   POST /auth/login                 login: the user's hash by username (or e-mail), then one bcrypt compare
//   GET  /health                     a constant JSON answer
//
// It reads its settings from the environment because it is a stand-alone process that
// bench/run.ts starts: DATABASE_URL (postgresql://…?schema=NAME), PORT, HOST.
import bcrypt from 'bcrypt';
import { createServer, type IncomingMessage } from 'node:http';
import pg from 'pg';

const databaseUrl = new URL(process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/test');
const schema = databaseUrl.searchParams.get('schema') ?? 'public';
// The schema is spliced into SQL, so only plain identifiers are accepted (as the app does).
if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(schema)) throw new Error(`invalid schema name "${schema}"`);
databaseUrl.searchParams.delete('schema');

// pg's default pool size (10), which is also what the app's Prisma driver adapter gets, so both
// sides have the same number of database connections.
const pool = new pg.Pool({ connectionString: databaseUrl.toString(), max: 10 });

// Every column but the password hash, renamed to the camelCase the API uses.
const PROFILE_COLUMNS = `id, username, email, first_name AS "firstName", last_name AS "lastName", phone,
  avatar_url AS "avatarUrl", role, status, is_verified AS "isVerified", is_active AS "isActive",
  created_at AS "createdAt", updated_at AS "updatedAt", last_login_at AS "lastLoginAt"`;
const SELECT_PROFILE = `SELECT ${PROFILE_COLUMNS} FROM "${schema}".users WHERE id = $1`;
// The app runs a findMany and a count in a transaction; a window count gives both in one query.
const SELECT_PAGE = `SELECT ${PROFILE_COLUMNS}, count(*) OVER () AS total FROM "${schema}".users ORDER BY id LIMIT $1 OFFSET $2`;
const SELECT_LOGIN_BY_USERNAME = `SELECT id, password_hash FROM "${schema}".users WHERE username = $1`;
const SELECT_LOGIN_BY_EMAIL = `SELECT id, password_hash FROM "${schema}".users WHERE email = $1`;

const USER_PATH = /^\/users\/(\d{1,9})$/;
const MAX_BODY_BYTES = 100 * 1024;

type Send = (status: number, body: unknown) => void;

function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) reject(new Error('body too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (error) {
        reject(error instanceof Error ? error : new Error(String(error)));
      }
    });
    req.on('error', reject);
  });
}

async function page(url: URL, send: Send): Promise<void> {
  const pageNumber = Number(url.searchParams.get('page') ?? 1);
  const perPage = Number(url.searchParams.get('perPage') ?? 20);
  if (!Number.isInteger(pageNumber) || pageNumber < 1 || !Number.isInteger(perPage) || perPage < 1 || perPage > 100) {
    send(400, { error: 'bad page' });
    return;
  }
  const { rows } = await pool.query<Record<string, unknown> & { total: string }>(SELECT_PAGE, [perPage, (pageNumber - 1) * perPage]);
  const total = rows[0] === undefined ? 0 : Number(rows[0].total);
  send(200, { data: rows.map(({ total: _total, ...user }) => user), page: pageNumber, perPage, total });
}

async function login(req: IncomingMessage, send: Send): Promise<void> {
  const body = await readJson(req);
  const { usernameOrEmail, password } = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  if (typeof usernameOrEmail !== 'string' || typeof password !== 'string') {
    send(400, { error: 'usernameOrEmail and password are required' });
    return;
  }
  const query = usernameOrEmail.includes('@') ? SELECT_LOGIN_BY_EMAIL : SELECT_LOGIN_BY_USERNAME;
  const { rows } = await pool.query<{ id: number; password_hash: string }>(query, [usernameOrEmail]);
  const user = rows[0];
  if (user === undefined || !(await bcrypt.compare(password, user.password_hash))) {
    send(401, { error: 'invalid credentials' });
    return;
  }
  send(200, { data: { id: user.id } });
}

const server = createServer((req, res) => {
  const send: Send = (status, body) => {
    const json = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(json) });
    res.end(json);
  };
  // Only the page route parses its query: a URL object per request would be work the point read
  // is meant to go without.
  const path = req.url ?? '/';
  const pathname = path.split('?', 1)[0];
  const fail = (error: unknown): void => send(500, { error: error instanceof Error ? error.message : String(error) });
  if (req.method === 'GET' && pathname === '/health') return send(200, { status: 'ok' });
  if (req.method === 'GET' && pathname === '/users') return void page(new URL(path, 'http://bare'), send).catch(fail);
  if (req.method === 'POST' && pathname === '/auth/login') return void login(req, send).catch(fail);
  const match = req.method === 'GET' ? USER_PATH.exec(pathname ?? '') : null;
  if (match === null) return send(404, { error: 'not found' });
  pool.query(SELECT_PROFILE, [Number(match[1])]).then((result) => {
    const row: unknown = result.rows[0];
    if (row === undefined) send(404, { error: 'not found' });
    else send(200, { data: row });
  }, fail);
});
server.keepAliveTimeout = 65_000;

server.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1', () => {
  const address = server.address();
  const where = typeof address === 'object' && address !== null ? `${address.address}:${address.port}` : String(address);
  process.stdout.write(`${JSON.stringify({ msg: 'bare server listening', address: where })}\n`);
});

const shutdown = (): void => {
  server.close(() => void pool.end().then(() => process.exit(0)));
  server.closeIdleConnections();
};
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
