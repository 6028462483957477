/** A dependency the process needs to serve requests, checked by `/ready` and the gRPC health service. */
export type ReadinessCheck = () => Promise<void>;

/**
 * `check`, run at most once at a time: whoever asks while it runs gets that run's outcome. The
 * probes are unauthenticated and exempt from rate limits (orchestrators call them), so without
 * this a flood of `/ready` or `Health/Check` was a flood of database queries and, in a split
 * topology, of calls down every layer. No outcome is kept after its run ends, so an answer is
 * never older than the request it answers.
 */
export function sharedCheck(check: ReadinessCheck): ReadinessCheck {
  let running: Promise<void> | undefined;
  return () => {
    running ??= Promise.resolve()
      .then(check)
      .finally(() => {
        running = undefined;
      });
    return running;
  };
}
