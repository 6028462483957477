import { currentWorkLimits } from '../infrastructure/call-context.ts';
import type { WorkGate } from '../infrastructure/work-gate.ts';

/**
 * Runs a listing (a page and the count of every match of its filter) through the gate of the
 * process that holds the database (LIST_QUERY_CONCURRENCY, LIST_QUERY_QUEUE_MAX), as its caller's
 * deadline and cancellation allow. A search that matches most of a large table costs the
 * database a scan per page, and a crowd of them, from as many addresses as the per-address rate
 * limit allows, would hold every pooled connection: point reads and logins would queue behind
 * them for seconds. Past the gate, a few lists run at once, more wait, and the rest are refused
 * at once with 503 / `unavailable` and a Retry-After. Without a gate (repositories built
 * directly, in tests), the listing just runs. Callers take turns (`caller`: the user a listing is
 * for), and one holds at most half of the queue: one administrator's token, sending lists from
 * hundreds of addresses, made the other administrators' pages wait seconds (helper 98).
 */
export function admitList<T>(gate: WorkGate | undefined, list: () => Promise<T>, caller?: number): Promise<T> {
  return gate === undefined ? list() : gate.run(list, { ...currentWorkLimits(), key: caller === undefined ? undefined : `user:${caller}` });
}
