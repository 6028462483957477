// Test data, created through the public API as real clients would: registered users (each with
// the access token its registration returned) and a token of the bootstrap administrator.
import { createRestClient } from '../src/clients/rest-client.ts';

export const BENCH_PASSWORD = 'Bench-Passw0rd!';
export const BENCH_ADMIN = { username: 'bench_admin', email: 'bench_admin@bench.example.com', password: 'Bench-Admin-Passw0rd1!' };

export interface SeededUser {
  id: number;
  username: string;
  password: string;
  accessToken: string;
}

export interface Fixtures {
  users: SeededUser[];
  adminToken: string;
}

/**
 * Registers `count` users a few at a time. Each registration costs a bcrypt hash (≈ 0.2 s at
 * cost 12), so a handful in flight keeps both cores busy without queueing hundreds of hashes.
 */
export async function seed(baseUrl: string, count: number, runId: string): Promise<Fixtures> {
  const api = createRestClient(baseUrl);
  const users: SeededUser[] = new Array<SeededUser>(count);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const index = next++;
      const username = `bench_${runId}_${index}`;
      const { data, error, response } = await api.POST('/api/v1/auth/register', {
        body: { username, email: `${username}@bench.example.com`, password: BENCH_PASSWORD, firstName: 'Bench', lastName: `User ${index}` },
      });
      if (data === undefined) throw new Error(`registering ${username} answered ${response.status}: ${JSON.stringify(error)}`);
      users[index] = { id: data.data.user.id, username, password: BENCH_PASSWORD, accessToken: data.data.tokens.accessToken };
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));

  const { data, error, response } = await api.POST('/api/v1/auth/login', {
    body: { usernameOrEmail: BENCH_ADMIN.username, password: BENCH_ADMIN.password },
  });
  if (data === undefined) throw new Error(`the bootstrap admin could not log in (${response.status}): ${JSON.stringify(error)}`);
  if (data.data.user.role !== 'ADMIN') throw new Error(`${BENCH_ADMIN.username} is not an ADMIN`);
  return { users, adminToken: data.data.tokens.accessToken };
}
