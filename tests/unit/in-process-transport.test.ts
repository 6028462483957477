// The in-process transport: a generated client over it reaches the implementation without
// serialization, with the server side's interceptors around it and a HandlerContext that carries
// the caller's headers, context values and deadline.
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, createClient, createContextKey, createContextValues, type Interceptor } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { Health, HealthCheckRequestSchema, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { createInProcessTransport, inProcessService } from '../../src/rpc/in-process-transport.ts';

const seenKey = createContextKey<string[]>([]);

describe('in-process transport', () => {
  it('when a client calls, then the implementation gets the very request object, the headers, values and deadline, inside the interceptors', async () => {
    const request = create(HealthCheckRequestSchema, { service: 'x' });
    const order: string[] = [];
    const tag =
      (name: string): Interceptor =>
      (next) =>
      async (req) => {
        order.push(`${name}:in`);
        const res = await next(req);
        order.push(`${name}:out`);
        res.header.set(`x-${name}`, 'yes');
        return res;
      };
    const transport = createInProcessTransport(
      [
        inProcessService(Health, {
          check(req, ctx) {
            order.push('impl');
            expect(req).toBe(request);
            expect(ctx.requestHeader.get('authorization')).toBe('Bearer t');
            expect(ctx.values.get(seenKey)).toEqual(['caller']);
            expect(ctx.timeoutMs()).toBeGreaterThan(0);
            ctx.responseHeader.set('x-impl', 'yes');
            return { status: ServingStatus.SERVING };
          },
        }),
      ],
      { interceptors: [tag('outer'), tag('inner')] },
    );
    const headers: Record<string, string> = {};
    const response = await createClient(Health, transport).check(request, {
      headers: { authorization: 'Bearer t' },
      contextValues: createContextValues().set(seenKey, ['caller']),
      timeoutMs: 1_000,
      onHeader: (header) => header.forEach((value, name) => (headers[name] = value)),
    });
    expect(response.status).toBe(ServingStatus.SERVING);
    expect(order).toEqual(['outer:in', 'inner:in', 'impl', 'inner:out', 'outer:out']);
    expect(headers).toMatchObject({ 'x-impl': 'yes', 'x-inner': 'yes', 'x-outer': 'yes' });
  });

  it('when the implementation throws, or the method is not served, or the deadline has passed, then the caller gets the error', async () => {
    const transport = createInProcessTransport([
      inProcessService(Health, {
        check() {
          throw new ConnectError('nope', Code.PermissionDenied);
        },
      }),
    ]);
    const client = createClient(Health, transport);
    await expect(client.check({})).rejects.toMatchObject({ code: Code.PermissionDenied });
    await expect(client.check({}, { timeoutMs: -1 })).rejects.toMatchObject({ code: Code.DeadlineExceeded });
    await expect(createClient(Health, createInProcessTransport([])).check({})).rejects.toMatchObject({ code: Code.Unimplemented });
  });
});
