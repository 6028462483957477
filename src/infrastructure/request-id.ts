import { randomUUID } from 'node:crypto';

// Ids from callers are echoed into headers and logs, so only short, plain ones are kept.
const ACCEPTABLE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The caller's `x-request-id` when it is sane, a new UUID otherwise; shared by REST and RPC. */
export function requestIdFrom(incoming: string | null | undefined): string {
  return incoming !== null && incoming !== undefined && ACCEPTABLE_REQUEST_ID.test(incoming) ? incoming : randomUUID();
}
