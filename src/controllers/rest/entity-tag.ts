import { createHash } from 'node:crypto';

/**
 * A strong entity tag for a body that is the same on every answer (the console's files, the
 * docs page, the contract): computed once where the body is read, sent with each answer, so a
 * client holding it revalidates with a 304. API answers carry no such tag: each envelope has its
 * own requestId and timestamp, so a tag of the body could never match (see rest-app.ts), and a
 * user's tag is its version (envelope.ts).
 */
export function entityTagOf(body: string | Buffer): string {
  return `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
}
