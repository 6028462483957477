// The rule a call to the repository layer in another process keeps through its transport, kept by
// the repositories of the process that holds the database: a request whose deadline has passed,
// or whose caller has gone, starts no more database work. Its answer has been given (or nobody
// awaits it), so what it would still write happens behind the client's back, and what it would
// read is waste: on a database that answers slowly without stalling, a call its client had given
// up on went on through every statement, holding a pooled connection each time (helper 178 saw a
// registration take 22–32 s). A repository call already under way runs to its end, bounded by the
// statement timeout; the writes a use case makes after its point of no return run `uninterrupted`
// (call-context.ts), with neither deadline nor caller, and jobs run detached from any request.
import { UnavailableError } from '../domain/errors.ts';
import { requestOutOfTime } from '../infrastructure/call-context.ts';
import { wrapMethods } from '../infrastructure/method-wrapper.ts';

/** Why the current request may start no more database work, or undefined while it may. */
function outOfTime(now: number): UnavailableError | undefined {
  const why = requestOutOfTime(now);
  if (why === 'abandoned') return new UnavailableError('The request was abandoned before its database work was done', undefined, 1);
  if (why === 'late') return new UnavailableError('The request ran out of time before its database work was done', undefined, 1);
  return undefined;
}

/**
 * `repository` with each of its methods refusing to start (a rejected promise) once the current
 * request is out of time or abandoned. Every repository method returns a promise.
 */
export function withinRequestTime<R extends object>(repository: R): R {
  return wrapMethods(repository, (_method, call) => (...args) => {
    const refusal = outOfTime(Date.now());
    return refusal === undefined ? call(args) : Promise.reject(refusal);
  });
}
