// Deadlines a client sets (connect-timeout-ms, grpc-timeout), over every RPC protocol and in
// every topology. A deadline longer than a timer can wait (2^31 ms, about 25 days) is valid by
// both specifications: it used to fire after 1 ms (Node's TimeoutOverflowWarning) and, in the
// split topologies, cancel the call to the service layer, answering `unavailable` at once (found
// by an attacking helper).
import { toBinary, create } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GetCurrentUserRequestSchema, LoginRequestSchema } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { register, startTestServer, type TestServer } from '../helpers/test-app.ts';
import { RawClient, RPC_PROTOCOLS } from './raw-protocols.ts';

let t: TestServer;
let raw: RawClient;

beforeAll(async () => {
  t = await startTestServer();
  raw = new RawClient(t.baseUrl);
});

afterAll(async () => {
  raw.close();
  await t.close();
});

describe('client deadlines', () => {
  it('when a deadline is longer than a timer can wait, then it is no deadline: every call is answered, in parallel over every RPC protocol', async () => {
    const user = await register(t);
    const procedure = 'arcana.auth.v1.AuthService/GetCurrentUser';
    const deadlines = [
      { connect: '2147483648', grpc: '2147484S' },
      { connect: '9999999999', grpc: '99999999S' },
      { connect: '2147483647', grpc: '99999999H' },
    ];
    const calls = RPC_PROTOCOLS.flatMap((protocol) =>
      deadlines.map(async (deadline) => {
        const headers: Record<string, string> = { authorization: `Bearer ${user.accessToken}` };
        if (protocol.startsWith('connect')) headers['connect-timeout-ms'] = deadline.connect;
        else headers['grpc-timeout'] = deadline.grpc;
        const payload = protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
        return { protocol, deadline: headers['connect-timeout-ms'] ?? headers['grpc-timeout'], code: (await raw.rpc(protocol, procedure, payload, { headers })).code };
      }),
    );
    for (const answer of await Promise.all(calls)) expect(answer).toEqual({ ...answer, code: 'ok' });
  });

  it('when a gRPC deadline is given in microseconds or nanoseconds, as grpc-go and grpc-java send every deadline under 100 s, then each call is answered as a whole-millisecond one is', async () => {
    // Found by an attacking helper (120): a deadline of a fraction of a millisecond was carried
    // to the service layer over Connect/HTTP as `connect-timeout-ms: 4999.0009765625`, which the
    // service process refused as a malformed header: in layered-http every such call was `internal`.
    // What grpc-go writes for deadlines of 5 s, 10 s and 30 s (a deadline in nanoseconds is at
    // most 100 ms, too short to be sure of a login in a split topology under a parallel test run).
    const deadlines = ['4999876u', '9999999u', '30000001u'];
    const protocols = RPC_PROTOCOLS.filter((protocol) => !protocol.startsWith('connect'));
    const me = toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
    const calls = protocols.flatMap((protocol) =>
      deadlines.map(async (deadline) => {
        // A user each: parallel logins of one account are held to its lockout's reservations.
        const user = await register(t);
        const login = toBinary(LoginRequestSchema, create(LoginRequestSchema, { usernameOrEmail: user.username, password: user.password }));
        const headers = { 'grpc-timeout': deadline };
        const [loggedIn, read] = await Promise.all([
          raw.rpc(protocol, 'arcana.auth.v1.AuthService/Login', login, { headers }),
          raw.rpc(protocol, 'arcana.auth.v1.AuthService/GetCurrentUser', me, { headers: { ...headers, authorization: `Bearer ${user.accessToken}` } }),
        ]);
        return { protocol, deadline, login: `${loggedIn.code} ${loggedIn.message}`.trim(), read: `${read.code} ${read.message}`.trim() };
      }),
    );
    expect(await Promise.all(calls)).toEqual(protocols.flatMap((protocol) => deadlines.map((deadline) => ({ protocol, deadline, login: 'ok', read: 'ok' }))));
  });

  it("when a call carries the other protocol's deadline header, already passed, then it means nothing: every call is answered, over every RPC protocol", async () => {
    // A Connect call with `grpc-timeout: 0n`, or a gRPC call with `connect-timeout-ms: 0`: the
    // monolith served them, the split topologies cut them short as deadline_exceeded (helper 143).
    const user = await register(t);
    const payload = (protocol: string) =>
      protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
    const answers = await Promise.all(
      RPC_PROTOCOLS.map(async (protocol) => {
        const foreign: Record<string, string> = protocol.startsWith('connect') ? { 'grpc-timeout': '0n' } : { 'connect-timeout-ms': '0' };
        const answer = await raw.rpc(protocol, 'arcana.auth.v1.AuthService/GetCurrentUser', payload(protocol), { token: user.accessToken, headers: foreign });
        return { protocol, answer: `${answer.code} ${answer.message}`.trim() };
      }),
    );
    expect(answers).toEqual(RPC_PROTOCOLS.map((protocol) => ({ protocol, answer: 'ok' })));
    // The protocol by its content type in any case, as connect-es reads it: `application/GRPC` was
    // served as gRPC with Connect's deadline header (helper 146).
    const capitals = await Promise.all(
      ['application/GRPC', 'Application/grpc+proto'].map(async (contentType) => {
        const answer = await raw.rpc('grpc', 'arcana.auth.v1.AuthService/GetCurrentUser', payload('grpc'), {
          token: user.accessToken,
          headers: { 'content-type': contentType, 'connect-timeout-ms': '0' },
        });
        return { contentType, answer: `${answer.code} ${answer.message}`.trim() };
      }),
    );
    expect(capitals).toEqual([
      { contentType: 'application/GRPC', answer: 'ok' },
      { contentType: 'Application/grpc+proto', answer: 'ok' },
    ]);
  });

  it('when a deadline has passed before the work could start, then the answer is deadline_exceeded, over every RPC protocol', async () => {
    const user = await register(t);
    const procedure = 'arcana.auth.v1.AuthService/Login';
    const answers = await Promise.all(
      RPC_PROTOCOLS.map(async (protocol) => {
        const headers: Record<string, string> = protocol.startsWith('connect') ? { 'connect-timeout-ms': '0' } : { 'grpc-timeout': '1n' };
        const login = { usernameOrEmail: user.username, password: user.password };
        const payload = protocol === 'connect-json' ? new TextEncoder().encode(JSON.stringify(login)) : toBinary(LoginRequestSchema, create(LoginRequestSchema, login));
        return { protocol, code: (await raw.rpc(protocol, procedure, payload, { headers })).code };
      }),
    );
    // Not `unavailable` (the split topologies' cancelled internal call) nor a login made anyway.
    expect(answers).toEqual(RPC_PROTOCOLS.map((protocol) => ({ protocol, code: 'deadline_exceeded' })));
  });

  it('when a deadline of zero is sent, then the call is deadline_exceeded without being carried out, over every RPC protocol, a read and a logout alike', async () => {
    // A zero deadline's timer fired after a fast call had been answered: a cached GetCurrentUser
    // came back OK (helper 67), and a write would have been done.
    const user = await register(t);
    const zero = (protocol: string, grpcUnit: string): Record<string, string> =>
      protocol.startsWith('connect') ? { 'connect-timeout-ms': '0' } : { 'grpc-timeout': `0${grpcUnit}` };
    const calls = RPC_PROTOCOLS.flatMap((protocol) =>
      ['n', 'm'].flatMap((unit) =>
        ['GetCurrentUser', 'Logout'].map(async (name) => {
          const payload = protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
          const answer = await raw.rpc(protocol, `arcana.auth.v1.AuthService/${name}`, payload, { token: user.accessToken, headers: zero(protocol, unit) });
          return { protocol, name, code: answer.code };
        }),
      ),
    );
    for (const answer of await Promise.all(calls)) expect(answer).toEqual({ ...answer, code: 'deadline_exceeded' });
    // None of the logouts was carried out: the session is alive.
    expect(
      (await raw.rpc('grpc', 'arcana.auth.v1.AuthService/GetCurrentUser', toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema)), { token: user.accessToken }))
        .code,
    ).toBe('ok');
  });

  it('when many calls carry deadlines of 1 to 8 ms at once, over every RPC protocol, then each is answered or deadline_exceeded, never unavailable', async () => {
    // In the split topologies the call to the service layer and the request ran out of time
    // together, and whichever timer fired first decided: 1 to 5 of 12 such calls answered 503
    // "temporarily unavailable", telling the client to retry a service that was up (found by an
    // attacking helper).
    const user = await register(t);
    const procedure = 'arcana.auth.v1.AuthService/GetCurrentUser';
    const calls = RPC_PROTOCOLS.flatMap((protocol) =>
      [1, 2, 3, 5, 8].flatMap((ms) =>
        Array.from({ length: 6 }, async () => {
          const headers: Record<string, string> = { authorization: `Bearer ${user.accessToken}` };
          if (protocol.startsWith('connect')) headers['connect-timeout-ms'] = String(ms);
          else headers['grpc-timeout'] = `${ms}m`;
          const payload = protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
          return `${protocol} ${(await raw.rpc(protocol, procedure, payload, { headers })).code}`;
        }),
      ),
    );
    const answers = await Promise.all(calls);
    expect(answers.filter((answer) => !/ (ok|deadline_exceeded)$/.test(answer))).toEqual([]);
  });
});
