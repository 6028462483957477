// gRPC load over cleartext HTTP/2: `concurrency` calls kept in flight on one HTTP/2 connection,
// as a gRPC client multiplexes them, until the time is up or the request cap is reached.
import { Code, ConnectError, createClient, type Client } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { performance } from 'node:perf_hooks';
import { AuthService } from '../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserService } from '../gen/proto/arcana/user/v1/user_service_pb.js';
import type { Call, GrpcLoadJob, LoadSummary } from './load-job.ts';
import { MeasurementWindow } from './measurement-window.ts';

export interface GrpcCaller {
  invoke(call: Call, timeoutMs: number): Promise<void>;
}

/** One h2c transport and the two public service clients over it. */
export function createGrpcCaller(baseUrl: string): GrpcCaller {
  // connect-node's gRPC transport always speaks HTTP/2 (it has no httpVersion option); with an
  // http:// base URL that is h2c with prior knowledge, as the server expects.
  const transport = createGrpcTransport({ baseUrl });
  const auth: Client<typeof AuthService> = createClient(AuthService, transport);
  const users: Client<typeof UserService> = createClient(UserService, transport);
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  return {
    async invoke(call, timeoutMs) {
      switch (call.rpc) {
        case 'getUser':
          await users.getUser({ userId: call.userId }, { headers: bearer(call.token), timeoutMs });
          return;
        case 'getCurrentUser':
          await auth.getCurrentUser({}, { headers: bearer(call.token), timeoutMs });
          return;
        case 'listUsers':
          await users.listUsers({ page: call.page, perPage: call.perPage }, { headers: bearer(call.token), timeoutMs });
          return;
        case 'login':
          await auth.login({ usernameOrEmail: call.usernameOrEmail, password: call.password }, { timeoutMs });
          return;
      }
    },
  };
}

/** The outcome name used in summaries: the Connect code of an RPC error, e.g. "unauthenticated". */
export function describeRpcError(error: unknown): string {
  const code = ConnectError.from(error).code;
  return Code[code].replace(/^[A-Z]/, (first) => first.toLowerCase());
}

/**
 * Runs `job` with `caller` for its warm-up plus duration as one continuous load and summarises
 * the calls that completed within the measured part (see MeasurementWindow).
 */
export async function runGrpcLoad(job: GrpcLoadJob, caller: GrpcCaller): Promise<LoadSummary> {
  const timeoutMs = job.timeoutSeconds * 1000;
  const window = new MeasurementWindow(performance.now(), job.warmupSeconds, job.durationSeconds);
  let next = 0;
  let started = 0;

  // Each lane issues its next call as soon as the previous one settles: a closed loop, like an
  // autocannon connection. No call starts after the window closes or beyond the cap, and every
  // call has a timeout, so the run ends at most one timeout after the window. The lanes share
  // one cursor over the calls, so consecutive calls go to different users.
  const lane = async (): Promise<void> => {
    while (performance.now() < window.closes && started < job.maxRequests) {
      started += 1;
      const call = job.calls[next++ % job.calls.length];
      if (call === undefined) return;
      const sent = performance.now();
      try {
        await caller.invoke(call, timeoutMs);
        const now = performance.now();
        window.complete(now, 'ok', true, now - sent);
      } catch (error) {
        window.complete(performance.now(), describeRpcError(error), false, 0);
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, lane));
  return window.summarize();
}
