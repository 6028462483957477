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
 * directly, in tests), the listing just runs. `recheck` authorizes the caller again when the
 * listing waited long (see LIST_RECHECK_AFTER_MS).
 */
export function admitList<T>(gate: WorkGate | undefined, recheck: (() => Promise<void>) | undefined, list: () => Promise<T>): Promise<T> {
  if (gate === undefined) return list();
  const arrived = performance.now();
  return gate.run(async () => {
    // Its caller authorized on arrival may have been demoted, suspended or signed out while it
    // waited (see ListOptions); one admitted at once is as fresh as any read.
    if (recheck !== undefined && performance.now() - arrived > LIST_RECHECK_AFTER_MS) await recheck();
    return list();
  }, currentWorkLimits());
}

/**
 * How long a listing may wait its turn and still run on its arrival's authorization: about what a
 * page of a large table takes to read. Past it, its caller is authorized again as it starts, two
 * reads by key; below it, a crowd of pages (the benchmark's 50 at once against 8 slots) pays
 * nothing.
 */
export const LIST_RECHECK_AFTER_MS = 50;
