/** A dependency the process needs to serve requests, checked by `/ready` and the gRPC health service. */
export type ReadinessCheck = () => Promise<void>;

/** How long a probe waits for a check before it counts as failed. */
export const READINESS_TIMEOUT_MS = 2_000;

/**
 * `check`, run at most once at a time: whoever asks while it runs gets that run's outcome. The
 * probes are unauthenticated and exempt from rate limits (orchestrators call them), so without
 * this a flood of `/ready` or `Health/Check` was a flood of database queries and, in a split
 * topology, of calls down every layer. No outcome is kept after its run ends, so an answer is
 * never older than the request it answers. A run that hangs (every pooled connection held by
 * stuck writes) fails each probe after `timeoutMs` and is not started again until it ends, so
 * probes neither hang with it nor pile more work behind it.
 */
export function sharedCheck(check: ReadinessCheck, timeoutMs = READINESS_TIMEOUT_MS): ReadinessCheck {
  let running: Promise<void> | undefined;
  return () => {
    running ??= Promise.resolve()
      .then(check)
      .finally(() => {
        running = undefined;
      });
    const run = running;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the check did not answer within ${timeoutMs} ms`)), timeoutMs);
      run.then(resolve, reject).finally(() => clearTimeout(timer));
    });
  };
}
