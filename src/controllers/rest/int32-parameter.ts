import { ValidationError } from '../../domain/errors.ts';

const MAX_INT32 = 2 ** 31 - 1;
const MIN_INT32 = -(2 ** 31);

/**
 * A path or query parameter that openapi.yaml declares an int32, as the number the service layer
 * takes. The validator has checked it, but by coercing the text with JavaScript's Number, and
 * lets through what that turns into Infinity (`1e400`, `Infinity`), which no int32 field holds
 * and which used to reach the database as a 500. Refused here as the validator refuses
 * `99999999999`, naming the parameter.
 */
export function int32Parameter(name: string, value: unknown): number {
  // The validator leaves a query parameter coerced (a default it filled in is a number), a
  // path parameter as the router read it.
  const number = typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : Number.NaN;
  if (!Number.isInteger(number) || number > MAX_INT32 || number < MIN_INT32) throw new ValidationError('Validation failed', { [name]: 'must match format "int32"' });
  return number;
}
