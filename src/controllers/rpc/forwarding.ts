// The public RPC API of a controller process whose service layer runs elsewhere: each method hands
// its request, as decoded and validated here, to the service process that implements it, with the
// caller (context values), the deadline, the cancellation and the Idempotency-Key, and relays the
// answer and its client-facing headers. Written once for every method of every service: nothing
// here knows what a method does.
import type { DescMethodUnary, DescService } from '@bufbuild/protobuf';
import type { HandlerContext, ServiceImpl, Transport } from '@connectrpc/connect';
import { IDEMPOTENCY_KEY_FIELD, MAX_IDEMPOTENCY_KEY_LENGTH } from '../../domain/idempotency-key.ts';
import { hostOf, relayAnswerHeaders } from '../../rpc/client-edge.ts';
import type { InProcessService } from '../../rpc/in-process-transport.ts';

/** `service`, answered by whichever process `transport` reaches. Unary methods only (all of ours are). */
export function forwardingService(service: DescService, transport: Transport): InProcessService {
  const impl: Record<string, (request: never, ctx: HandlerContext) => Promise<unknown>> = {};
  for (const method of service.methods) {
    if (method.methodKind !== 'unary') continue;
    const unary = method as DescMethodUnary;
    impl[method.localName] = async (request, ctx) => {
      const key = carriedKey(ctx.requestHeader.get(IDEMPOTENCY_KEY_FIELD));
      const response = await transport.unary(unary, ctx.signal, ctx.timeoutMs(), key === undefined ? undefined : { [IDEMPOTENCY_KEY_FIELD]: key }, request, ctx.values);
      relayAnswerHeaders(response.header, ctx.responseHeader, { origin: ctx.requestHeader.get('origin'), host: hostOf(ctx.url) });
      return response.message;
    };
  }
  return { service, impl: impl as unknown as Partial<ServiceImpl<DescService>> };
}

/**
 * The Idempotency-Key as the service process is to see it: the service layer checks it, as in the
 * monolith, so a key too long is carried one character past the limit (still refused there, and
 * for the same reason) rather than whole: a client's 60 KB key made the internal call outgrow the
 * layer server's header limit, a 500 or 503 where the monolith answered. The stand-in ends in a
 * printable character: a cut that ended in a space lost it on the internal hop, which made it a
 * valid 255-character key and the registration went ahead (helper 143).
 */
function carriedKey(key: string | null): string | undefined {
  if (key === null) return undefined;
  return key.length > MAX_IDEMPOTENCY_KEY_LENGTH ? `${key.slice(0, MAX_IDEMPOTENCY_KEY_LENGTH)}~` : key;
}
