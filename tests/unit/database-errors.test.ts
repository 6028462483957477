// src/repositories/prisma-errors.ts: what database failures become, whichever database raised them.
import { describe, expect, it } from 'vitest';
import { Prisma } from '../../gen/prisma/client.ts';
import { ConflictError, UnavailableError } from '../../src/domain/errors.ts';
import { translateDatabaseError, withDatabaseErrors } from '../../src/repositories/prisma-errors.ts';

const known = (code: string, meta: Record<string, unknown> = {}) => new Prisma.PrismaClientKnownRequestError('failed', { code, clientVersion: 'test', meta });

describe('translateDatabaseError', () => {
  it('when a unique index is violated on PostgreSQL or MySQL, then the same conflict names the field', () => {
    // The shapes the pg and mariadb adapters give P2002.
    const postgres = known('P2002', { driverAdapterError: { cause: { kind: 'UniqueConstraintViolation', constraint: { fields: ['username_key'] } } } });
    const mysql = known('P2002', { driverAdapterError: { cause: { kind: 'UniqueConstraintViolation', constraint: { index: 'users_username_key_key' } } } });
    for (const error of [postgres, mysql]) {
      const translated = translateDatabaseError(error);
      expect(translated).toBeInstanceOf(ConflictError);
      expect((translated as ConflictError).details).toEqual({ username: 'already exists' });
    }
    const email = translateDatabaseError(known('P2002', { driverAdapterError: { cause: { constraint: { index: 'users_email_key' } } } }));
    expect((email as ConflictError).details).toEqual({ email: 'already exists' });
  });

  it('when a transaction deadlocks or conflicts (P2034, or a raw statement P2010 on PostgreSQL and MySQL), then it is a retryable 503, not an unknown error', () => {
    // The shapes the pg and mariadb adapters gave a FOR UPDATE that deadlocked.
    const conflict = (originalCode: string) => known('P2010', { driverAdapterError: { name: 'DriverAdapterError', cause: { originalCode, kind: 'TransactionWriteConflict' } } });
    for (const error of [known('P2034'), conflict('40P01'), conflict('1213')]) {
      const translated = translateDatabaseError(error);
      expect(translated).toBeInstanceOf(UnavailableError);
      expect((translated as UnavailableError).retryAfterSeconds).toBe(1);
    }
    expect(translateDatabaseError(known('P2010', { driverAdapterError: { cause: { originalCode: '42601', kind: 'postgres' } } }))).not.toBeInstanceOf(UnavailableError);
  });

  it('when no pooled connection comes free in time, for a statement (P2024) or a transaction (P2028), then it is a retryable 503, not a 500', () => {
    for (const code of ['P2024', 'P2028']) {
      const translated = translateDatabaseError(known(code));
      expect(translated).toBeInstanceOf(UnavailableError);
      expect((translated as UnavailableError).retryAfterSeconds).toBe(1);
    }
  });

  it('when the MySQL server cannot be reached (P2039 with a connection errno), then it is unavailable; other MySQL errors pass through', () => {
    const unreachable = known('P2039', { driverAdapterError: { cause: { kind: 'mysql', code: 45028 } } });
    expect(translateDatabaseError(unreachable)).toBeInstanceOf(UnavailableError);
    const syntax = known('P2039', { driverAdapterError: { cause: { kind: 'mysql', code: 1064 } } });
    expect(translateDatabaseError(syntax)).toBe(syntax);
  });

  it('when a connection is lost or given up on under a statement, inside a transaction (P2010) or outside it (a plain node-postgres error), then it is unavailable, not a 500 (helper 102)', () => {
    const given = known('P2010', { driverAdapterError: { name: 'DriverAdapterError', cause: { kind: 'SocketTimeout' } } });
    const closed = known('P2010', { driverAdapterError: { name: 'DriverAdapterError', cause: { kind: 'ConnectionClosed' } } });
    for (const error of [given, closed, new Error('Connection terminated unexpectedly'), new Error('query failed', { cause: new Error('Connection terminated') })]) {
      expect(translateDatabaseError(error)).toBeInstanceOf(UnavailableError);
    }
    const other = new Error('Connection terminated by the client for no reason we know');
    expect(translateDatabaseError(other)).toBe(other);
  });
});

describe('withDatabaseErrors', () => {
  const deadlock = () => known('P2010', { driverAdapterError: { name: 'DriverAdapterError', cause: { originalCode: '1213', kind: 'TransactionWriteConflict' } } });

  it('when the database rolls a call back as a deadlock victim, then the call runs again and its answer is the answer; after three collisions it is the retryable 503', async () => {
    // Found by an attacker (helper 109): on MariaDB, administrators removing each other in
    // parallel now and then got 503 "collided" where the write would have gone through.
    let calls = 0;
    await expect(
      withDatabaseErrors(async () => {
        calls += 1;
        if (calls === 1) throw deadlock();
        return 'written';
      }),
    ).resolves.toBe('written');
    expect(calls).toBe(2);

    calls = 0;
    const always = withDatabaseErrors(async () => {
      calls += 1;
      throw deadlock();
    });
    await expect(always).rejects.toBeInstanceOf(UnavailableError);
    expect(calls).toBe(3);
  });

  it('when a call nested in another has made its attempts, then the outer one does not make them again', async () => {
    let inner = 0;
    const nested = withDatabaseErrors(() =>
      withDatabaseErrors(async () => {
        inner += 1;
        throw deadlock();
      }),
    );
    await expect(nested).rejects.toBeInstanceOf(UnavailableError);
    expect(inner).toBe(3);
  });

  it('when a call fails for anything but a collision, then it is not run again', async () => {
    for (const error of [known('P2002'), known('P1001'), known('P2024'), new Error('boom')]) {
      let calls = 0;
      await expect(
        withDatabaseErrors(async () => {
          calls += 1;
          throw error;
        }),
      ).rejects.toBeDefined();
      expect(calls).toBe(1);
    }
  });
});
