// The embedded database (PGlite) is one process's: two servers started on one DATA_DIR both ran,
// handed the same ids to different users and left the table disagreeing with its own unique
// index (helper 53). Before PGlite opens the directory, this process claims it with a lock file
// holding its pid, created exclusively; a second process finds it and refuses to start. A lock
// left by a process that died (kill -9, a crash) names a pid that no longer runs and is taken over.
import { randomBytes } from 'node:crypto';
import { link, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const LOCK_FILE = 'arcana-server.pid';
/** Lock files this process holds: its own pid in one it does not hold is a previous life's (a container's pid 1). */
const held = new Set<string>();

/** Claims `dataDir` for this process; resolves to the release, or rejects when another process holds it. */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const path = join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < ATTEMPTS; attempt += 1) {
    if (await createLock(path)) return claimed(path);
    const text = await readLock(path);
    // Gone again: its holder let it go, or a take-over is between its two steps.
    if (text === null) continue;
    const holder = Number.parseInt(text, 10);
    if (isRunning(holder) && (holder !== process.pid || held.has(path))) {
      throw new Error(
        `DATA_DIR ${dataDir} is in use by process ${holder}: the embedded database takes one server at a time ` +
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
      if (await createLock(path)) return claimed(path);
    } finally {
      await rm(takeover, { force: true });
    }
  }
  throw new Error(`DATA_DIR ${dataDir}: could not take its lock file ${path}; another server is starting there`);
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
async function createLock(path: string): Promise<boolean> {
  const draft = `${path}.${process.pid}-${randomBytes(4).toString('hex')}.draft`;
  await writeFile(draft, `${process.pid}\n`);
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

function claimed(path: string): () => Promise<void> {
  held.add(path);
  return () => release(path);
}

async function release(path: string): Promise<void> {
  if (!held.delete(path)) return;
  // Only this process's own lock goes.
  if (Number.parseInt((await readLock(path)) ?? '', 10) === process.pid) await rm(path, { force: true });
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
