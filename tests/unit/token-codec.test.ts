import { createHmac, createSecretKey } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { hashToken, TokenCodec } from '../../src/infrastructure/security/token-codec.ts';

const SECRET = 'a'.repeat(64);
const options = { secret: SECRET, issuer: 'arcana', audience: 'arcana-api', accessTtlSeconds: 900, refreshTtlSeconds: 3600 };
const key = createSecretKey(Buffer.from(SECRET, 'utf8'));
const now = Math.floor(Date.now() / 1000);
const base = { tokenType: 'access', sub: '7', jti: 'j', iss: 'arcana', aud: 'arcana-api', iat: now, exp: now + 600 };
const b64 = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
/** Signs any header and payload, including what jsonwebtoken's own sign refuses to make. */
const rawSign = (header: object, payload: unknown) => {
  const head = `${b64(header)}.${b64(payload)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
};
const sign = (payload: object, algorithm: jwt.Algorithm = 'HS256', secret: string | Buffer = SECRET) => jwt.sign(payload, secret, { algorithm });

/** Tokens a client could present: well formed, forged, expired, for someone else. */
const tokens: Record<string, string> = {
  valid: sign(base),
  'audience in a list': sign({ ...base, aud: ['other', 'arcana-api'] }),
  expired: sign({ ...base, exp: now - 1 }),
  'expires now': sign({ ...base, exp: now }),
  'exp not a number': rawSign({ alg: 'HS256', typ: 'JWT' }, { ...base, exp: String(now + 600) }),
  'nbf not a number': rawSign({ alg: 'HS256', typ: 'JWT' }, { ...base, nbf: 'soon' }),
  'payload an array': rawSign({ alg: 'HS256', typ: 'JWT' }, [base]),
  'header without typ': rawSign({ alg: 'HS256' }, base),
  'not before the future': sign({ ...base, nbf: now + 60 }),
  'not before the past': sign({ ...base, nbf: now - 60 }),
  'other audience': sign({ ...base, aud: 'other' }),
  'no audience': sign({ ...base, aud: undefined }),
  'other issuer': sign({ ...base, iss: 'evil' }),
  'other key': sign(base, 'HS256', 'b'.repeat(64)),
  HS384: sign(base, 'HS384'),
  'alg none': `${b64({ alg: 'none', typ: 'JWT' })}.${b64(base)}.`,
  'alg none with a signature': `${b64({ alg: 'none', typ: 'JWT' })}.${b64(base)}.${sign(base).split('.')[2]}`,
  'payload swapped': (() => {
    const [header, , signature] = sign(base).split('.');
    return `${header}.${b64({ ...base, sub: '1' })}.${signature}`;
  })(),
  'signature padded': `${sign(base)}=`,
  'two parts': sign(base).split('.').slice(0, 2).join('.'),
  'four parts': `${sign(base)}.x`,
  'payload not JSON': rawSign({ alg: 'HS256', typ: 'JWT' }, 'not json'),
  empty: '',
};

function jsonwebtokenAccepts(token: string): boolean {
  try {
    const payload = jwt.verify(token, key, { algorithms: ['HS256'], issuer: options.issuer, audience: options.audience });
    return typeof payload !== 'string';
  } catch {
    return false;
  }
}

function codecAccepts(token: string, codec = new TokenCodec(options)): boolean {
  try {
    codec.verify(token, 'access');
    return true;
  } catch {
    return false;
  }
}

describe('TokenCodec.verify', () => {
  it.each(Object.keys(tokens))('when a client presents a token (%s), then it is accepted exactly when jsonwebtoken accepts it', (name) => {
    const token = tokens[name]!;
    expect(codecAccepts(token)).toBe(jsonwebtokenAccepts(token));
  });

  it("when a signed token's header names critical extensions (crit), then it is refused, where jsonwebtoken would take it", () => {
    for (const crit of [['exp'], ['b64'], []]) {
      const token = rawSign({ alg: 'HS256', typ: 'JWT', crit }, base);
      expect(jsonwebtokenAccepts(token)).toBe(true);
      expect(codecAccepts(token), JSON.stringify(crit)).toBe(false);
    }
  });

  it("when a pair is issued with a shorter refresh than access lifetime, or near its session's end, then the access token expires no later than the refresh token", () => {
    const now = new Date('2030-01-01T00:00:00Z');
    const short = new TokenCodec({ ...options, accessTtlSeconds: 3600, refreshTtlSeconds: 60 }).issuePair(7, now);
    expect(short.accessExpiresAt).toEqual(short.refreshExpiresAt);
    expect(short.accessTtlSeconds).toBe(60);
    const nearEnd = new TokenCodec(options).issuePair(7, now, new Date(now.getTime() + 120_000));
    expect(nearEnd.accessExpiresAt.getTime()).toBe(now.getTime() + 120_000);
    expect(nearEnd.refreshExpiresAt.getTime()).toBe(now.getTime() + 120_000);
  });

  it('when a valid token is presented, then its claims come back', () => {
    const claims = new TokenCodec(options).verify(tokens.valid!, 'access');
    expect(claims).toEqual({ userId: 7, tokenType: 'access', jti: 'j', expiresAt: new Date(base.exp * 1000), hash: hashToken(tokens.valid!) });
    expect(() => new TokenCodec(options).verify(tokens.valid!, 'refresh')).toThrow('Invalid token type');
  });

  it("when one codec sees every token twice (the second time from what it remembers), then each verdict is still jsonwebtoken's", () => {
    const codec = new TokenCodec(options);
    const names = Object.keys(tokens);
    // The valid token first, so that the forgeries made from it are judged after it is remembered.
    for (const round of [1, 2]) {
      for (const name of names) expect([round, name, codecAccepts(tokens[name]!, codec)]).toEqual([round, name, jsonwebtokenAccepts(tokens[name]!)]);
    }
  });

  describe('a remembered token and the clock', () => {
    afterEach(() => vi.useRealTimers());

    it('when a remembered token expires, then it is refused from that second on', () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(now * 1000);
      const codec = new TokenCodec(options);
      const token = sign({ ...base, exp: now + 5 });
      expect(codec.verify(token, 'access').userId).toBe(7);
      vi.setSystemTime((now + 4) * 1000);
      expect(codec.verify(token, 'access').userId).toBe(7);
      vi.setSystemTime((now + 5) * 1000);
      expect(() => codec.verify(token, 'access')).toThrow('Invalid or expired access token');
    });

    it('when a token not yet valid is presented early and again later, then it is refused, then accepted', () => {
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(now * 1000);
      const codec = new TokenCodec(options);
      const token = sign({ ...base, nbf: now + 30 });
      expect(() => codec.verify(token, 'access')).toThrow('Invalid or expired access token');
      vi.setSystemTime((now + 30) * 1000);
      expect(codec.verify(token, 'access').userId).toBe(7);
    });

    it('when more valid tokens than it keeps are presented, then the first is verified again and still accepted', () => {
      const codec = new TokenCodec(options);
      const first = sign({ ...base, jti: 'first' });
      expect(codec.verify(first, 'access').jti).toBe('first');
      for (let i = 0; i < 5000; i++) codec.verify(sign({ ...base, jti: `other-${i}` }), 'access');
      expect(codec.verify(first, 'access')).toMatchObject({ jti: 'first', hash: hashToken(first) });
    });
  });

  it('when a signed token names a subject no int32 user id holds, then it is refused like a token of the wrong type, before any lookup', () => {
    const codec = new TokenCodec(options);
    for (const sub of ['2147483648', '99999999999999999999999', '00000000002147483647']) {
      expect(() => codec.verify(sign({ ...base, sub }), 'access'), sub).toThrow('Invalid token type');
    }
    expect(codec.verify(sign({ ...base, sub: '2147483647' }), 'access').userId).toBe(2_147_483_647);
  });

  it('when a token the codec issued is verified, then it passes', () => {
    const codec = new TokenCodec(options);
    const pair = codec.issuePair(42);
    expect(codec.verify(pair.accessToken, 'access').userId).toBe(42);
    expect(codec.verify(pair.refreshToken, 'refresh').userId).toBe(42);
  });
});
