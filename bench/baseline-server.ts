// The floor the application is compared with: bare node:http answering GET /users/:id with the
// one PostgreSQL query the app's user repository makes for a profile, serialised as JSON. No
// framework, authentication, validation, cache or envelope. It reads its settings from the
// environment because it is a stand-alone process that bench/run.ts starts:
// DATABASE_URL (postgresql://…?schema=NAME), PORT, HOST.
import { createServer } from 'node:http';
import pg from 'pg';

const databaseUrl = new URL(process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/test');
const schema = databaseUrl.searchParams.get('schema') ?? 'public';
// The schema is spliced into SQL, so only plain identifiers are accepted (as the app does).
if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(schema)) throw new Error(`invalid schema name "${schema}"`);
databaseUrl.searchParams.delete('schema');

// pg's default pool size (10), which is also what the app's Prisma driver adapter gets, so both
// sides have the same number of database connections.
const pool = new pg.Pool({ connectionString: databaseUrl.toString(), max: 10 });

// The columns of UserRepository.findProfile (every column but the password hash), renamed to the
// camelCase the API uses.
const SELECT_PROFILE = `SELECT id, username, email, first_name AS "firstName", last_name AS "lastName", phone,
  avatar_url AS "avatarUrl", role, status, is_verified AS "isVerified", is_active AS "isActive",
  created_at AS "createdAt", updated_at AS "updatedAt", last_login_at AS "lastLoginAt"
  FROM "${schema}".users WHERE id = $1`;

const USER_PATH = /^\/users\/(\d{1,9})$/;

const server = createServer((req, res) => {
  const send = (status: number, body: unknown): void => {
    const json = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(json) });
    res.end(json);
  };
  if (req.method === 'GET' && req.url === '/health') return send(200, { status: 'ok' });
  const match = req.method === 'GET' ? USER_PATH.exec(req.url ?? '') : null;
  if (match === null) return send(404, { error: 'not found' });
  pool.query(SELECT_PROFILE, [Number(match[1])]).then(
    (result) => (result.rows[0] === undefined ? send(404, { error: 'not found' }) : send(200, { data: result.rows[0] })),
    (error: unknown) => send(500, { error: error instanceof Error ? error.message : String(error) }),
  );
});
server.keepAliveTimeout = 65_000;

server.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1', () => {
  const address = server.address();
  const where = typeof address === 'object' && address !== null ? `${address.address}:${address.port}` : String(address);
  process.stdout.write(`${JSON.stringify({ msg: 'baseline listening', address: where })}\n`);
});

const shutdown = (): void => {
  server.close(() => void pool.end().then(() => process.exit(0)));
  server.closeIdleConnections();
};
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
