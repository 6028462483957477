// One request of a load plan, made with a real client before and after each measurement. Before:
// a plan that fails (a bad token, a missing route) stops there with the server's answer instead
// of measuring errors fast. After: the server still answers correctly after the load. For gRPC
// it also gives the size of a successful answer, which h2load's byte count is checked against,
// because h2load counts HTTP statuses and a failed gRPC call is an HTTP 200 too.
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';
import { Code, ConnectError, type Transport } from '@connectrpc/connect';
import type { LoadPlan } from './scenarios.ts';

export interface CallCheck {
  ok: boolean;
  /** HTTP status, or the Connect code name of a failed RPC. */
  outcome: string;
  /** gRPC: bytes of a successful answer's DATA (length prefix included). */
  answerBytes?: number;
  detail?: string;
}

const transports = new Map<string, Transport>();

/** Makes the plan's first request against `baseUrl` and reports how it went; never throws. */
export async function checkCall(plan: LoadPlan, baseUrl: string, timeoutMs: number): Promise<CallCheck> {
  if (plan.generator === 'wrk') {
    const request = plan.requests[0];
    if (request === undefined) return { ok: false, outcome: 'no request' };
    try {
      const response = await fetch(new URL(request.path, baseUrl), {
        method: request.method,
        headers: request.headers,
        ...(request.body === undefined ? {} : { body: request.body }),
        signal: AbortSignal.timeout(timeoutMs),
      });
      const body = await response.text();
      return { ok: response.ok, outcome: String(response.status), ...(response.ok ? {} : { detail: `${request.method} ${request.path}: ${body.slice(0, 300)}` }) };
    } catch (error) {
      return { ok: false, outcome: 'connection error', detail: error instanceof Error ? error.message : String(error) };
    }
  }
  // One transport per server and format, as a client application would keep; the HTTP/2
  // connection is then already open when the load starts.
  const key = `${plan.format} ${baseUrl}`;
  let transport = transports.get(key);
  if (transport === undefined) {
    transport = plan.format === 'grpc' ? createGrpcTransport({ baseUrl }) : createConnectTransport({ baseUrl, httpVersion: '2', useBinaryFormat: false });
    transports.set(key, transport);
  }
  try {
    const answerBytes = await plan.rpc.invoke(transport, timeoutMs);
    return { ok: true, outcome: 'ok', answerBytes };
  } catch (error) {
    const connectError = ConnectError.from(error);
    return { ok: false, outcome: codeName(connectError), detail: `${plan.rpc.path}: ${connectError.message}` };
  }
}

/** The code's name as the Connect protocol writes it, e.g. not_found. */
function codeName(error: ConnectError): string {
  return Code[error.code].replace(/[A-Z]/g, (letter, offset: number) => `${offset === 0 ? '' : '_'}${letter.toLowerCase()}`);
}
