// The rule for a client's Idempotency-Key, the same on every protocol (openapi.yaml states it for
// REST): 1 to 255 printable ASCII characters. Printable ASCII keeps it a valid header value on
// every hop, HTTP/1.1 and HTTP/2 alike; 255 bounds what one key costs to hash.
import { ValidationError } from './errors.ts';

/** The field name an invalid key is reported under: the header's, as REST's validator names it. */
export const IDEMPOTENCY_KEY_FIELD = 'idempotency-key';
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/** `key` when it is a valid Idempotency-Key; a ValidationError naming the header otherwise. */
export function checkIdempotencyKey(key: string): string {
  let problem: string | undefined;
  if (key.length === 0) problem = 'must not be empty';
  else if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH) problem = `must be at most ${MAX_IDEMPOTENCY_KEY_LENGTH} characters`;
  else if (!/^[\x20-\x7E]+$/.test(key)) problem = 'must be printable ASCII';
  if (problem !== undefined) throw new ValidationError('Invalid Idempotency-Key', { [IDEMPOTENCY_KEY_FIELD]: problem });
  return key;
}
