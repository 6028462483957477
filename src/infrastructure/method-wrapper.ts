// An object's methods, each wrapped, for the decorators that stand between a repository and its
// callers (tracing spans, the request's time): the methods of the object's class and its parents,
// wrapped once, on an object that inherits everything else from the original.

/**
 * `target` with each method of its prototype chain (`constructor` aside) replaced by what `wrap`
 * makes of it; `call` runs the original on `target`.
 */
export function wrapMethods<T extends object>(target: T, wrap: (method: string, call: (args: unknown[]) => unknown) => (...args: unknown[]) => unknown): T {
  const wrapped = Object.create(target) as Record<string, unknown>;
  let proto: object | null = Object.getPrototypeOf(target) as object | null;
  while (proto !== null && proto !== Object.prototype) {
    for (const method of Object.getOwnPropertyNames(proto)) {
      const fn = (target as Record<string, unknown>)[method];
      if (method === 'constructor' || typeof fn !== 'function' || Object.hasOwn(wrapped, method)) continue;
      wrapped[method] = wrap(method, (args) => fn.apply(target, args) as unknown);
    }
    proto = Object.getPrototypeOf(proto) as object | null;
  }
  return wrapped as T;
}
