// The embedded database (PGlite) is one process's: two servers started on one DATA_DIR both ran,
// handed the same ids to different users and left the table disagreeing with its own unique
// index (helper 53). Before PGlite opens the directory, this process claims it with a lock file
// holding its pid, created exclusively; a second process finds it and refuses to start. A lock
// left by a process that died (kill -9, a crash) names a pid that no longer runs and is taken over.
import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { link, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const LOCK_FILE = 'arcana-server.pid';
/** Lock files this process holds: its own pid in one it does not hold is a previous life's (a container's pid 1). */
const held = new Map<string, NodeJS.Timeout>();

/**
 * How a holder in another pid namespace (another container on the same volume) is known to be
 * alive: it touches its lock every `heartbeatMs`, and one whose lock has not been touched for
 * `staleAfterMs` is taken for dead. Tests shorten them.
 */
export interface LockTiming {
  heartbeatMs: number;
  staleAfterMs: number;
}
// Ten seconds: PGlite runs in the main thread, whose timers a long statement holds up, and a
// holder whose beat stopped that long would be taken for dead. A container restarted after a
// crash (its new pid namespace is another's) waits that long for its previous life's lock.
const DEFAULT_TIMING: LockTiming = { heartbeatMs: 1_000, staleAfterMs: 10_000 };

/** Claims `dataDir` for this process; resolves to the release, or rejects when another process holds it. */
export async function lockDataDir(dataDir: string, timing: LockTiming = DEFAULT_TIMING, onLost: () => void = () => undefined): Promise<() => Promise<void>> {
  const path = join(dataDir, LOCK_FILE);
  const self = `${process.pid}\n${processIdentity()}\n`;
  for (let attempt = 0; attempt < ATTEMPTS; attempt += 1) {
    if (await createLock(path, self)) return claimed(path, self, timing, onLost);
    const text = await readLock(path);
    // Gone again: its holder let it go, or a take-over is between its two steps.
    if (text === null) continue;
    const [pidText = '', identity = ''] = text.split('\n');
    const holder = Number.parseInt(pidText, 10);
    // A holder in another pid namespace (the image runs the server as pid 1: two containers on
    // one volume both read "1" as their own pid, and the second took the first one's lock and
    // ran beside it, helper 199) is judged by its heartbeat, as its pid means another process here.
    const foreign = identity !== '' && identity !== processIdentity();
    if (foreign ? await keepsBeating(path, text, timing) : isRunning(holder) && (holder !== process.pid || held.has(path))) {
      throw new Error(
        `DATA_DIR ${dataDir} is in use by process ${holder}${foreign ? ' of another container or machine' : ''}: the embedded database takes one server at a time ` +
          `(stop that one, give this one another DATA_DIR, or remove ${path} if no server runs there)`,
      );
    }
    // A dead holder's lock: one process takes it over, by first creating the take-over mark for
    // that holder exclusively; a process losing that race looks again. The mark's holder reads
    // the lock once more before removing it: a process that read the dead pid before another took
    // the lock over, and found the mark gone with that take-over done, would otherwise remove the
    // new holder's lock and write its own (helper 113: two or three of six servers started at
    // once on a dead server's directory each took it).
    const takeover = `${path}.${Number.isSafeInteger(holder) ? holder : 'unreadable'}`;
    if (!(await createExclusively(takeover, ''))) continue;
    try {
      if ((await readLock(path)) !== text) continue;
      await rm(path, { force: true });
      if (await createLock(path, self)) return claimed(path, self, timing, onLost);
    } finally {
      await rm(takeover, { force: true });
    }
  }
  throw new Error(
    `DATA_DIR ${dataDir}: could not take its lock file ${path}: another server is starting there, or one was stopped ` +
      `while it took over a dead server's lock (if no server runs or starts there, remove ${path} and ${path}.* and start again)`,
  );
}

/**
 * This process's pid namespace on this boot of this machine, which a pid is only meaningful in:
 * each container has its own. Elsewhere than Linux, the host name.
 */
let identity: string | undefined;
function processIdentity(): string {
  if (identity !== undefined) return identity;
  try {
    identity = `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()}/${readlinkSync('/proc/self/ns/pid')}`;
  } catch {
    identity = `host ${hostname()}`;
  }
  return identity;
}

/**
 * Whether the lock (still `text`) is touched within `staleAfterMs`: its holder lives. Changes of
 * its modification time are watched, not compared with this clock: a volume shared between
 * machines carries their clocks' differences.
 */
async function keepsBeating(path: string, text: string, timing: LockTiming): Promise<boolean> {
  const modified = async () => (await stat(path).catch(() => undefined))?.mtimeMs;
  const first = await modified();
  const until = Date.now() + timing.staleAfterMs;
  while (Date.now() < until) {
    await sleep(Math.min(timing.heartbeatMs / 2, 250));
    if ((await readLock(path)) !== text) return false;
    if ((await modified()) !== first) return true;
  }
  return false;
}

/** Tries at the lock before giving up to other servers starting on the directory. */
const ATTEMPTS = 10;

/** The lock file's text, or null when there is none (or it cannot be read). */
function readLock(path: string): Promise<string | null> {
  return readFile(path, 'utf8').catch(() => null);
}

/**
 * Creates the lock file holding this process's pid, unless one exists; whether it did. The file
 * is written under a name of this process's own and then linked into place, so no process ever
 * reads the lock empty. (It was created empty and then written: a process that read it in between
 * waited up to a second for the pid, then took its writer for a crashed one, removed the lock and
 * ran beside it; a writer starved of the CPU for that second lost its lock.)
 */
async function createLock(path: string, text: string): Promise<boolean> {
  const draft = `${path}.${process.pid}-${randomBytes(4).toString('hex')}.draft`;
  await writeFile(draft, text);
  try {
    await link(draft, path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new Error(`could not create the lock file ${path} (the embedded database needs a DATA_DIR on a file system with hard links): ${(error as Error).message}`, {
      cause: error,
    });
  } finally {
    await rm(draft, { force: true });
  }
}

/** Creates `path` with `text` unless it exists; whether it did. */
async function createExclusively(path: string, text: string): Promise<boolean> {
  try {
    await writeFile(path, text, { flag: 'wx' });
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
}

/**
 * Holds the lock: touches it every `heartbeatMs` (what another container's server judges this one
 * by, keepsBeating) while it is still this process's. One stopped or stalled past `staleAfterMs`
 * finds it taken over by a server of another namespace: it then stops touching it and calls
 * `onLost`, and its release no longer removes the lock, which is the other's (helper 200: a
 * resumed holder served beside the new one, and its release let a third start).
 */
function claimed(path: string, text: string, timing: LockTiming, onLost: () => void): () => Promise<void> {
  const beat = setInterval(() => {
    void readLock(path).then((now) => {
      if (!held.has(path)) return;
      if (now === text) {
        const at = new Date();
        utimes(path, at, at).catch(() => undefined);
        return;
      }
      clearInterval(beat);
      held.delete(path);
      onLost();
    });
  }, timing.heartbeatMs);
  beat.unref();
  held.set(path, beat);
  return () => release(path, text);
}

async function release(path: string, text: string): Promise<void> {
  const beat = held.get(path);
  if (beat === undefined) return;
  clearInterval(beat);
  held.delete(path);
  // Only this process's own lock goes: its pid alone is every container's 1.
  if ((await readLock(path)) === text) await rm(path, { force: true });
}

function isRunning(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it runs, as another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
