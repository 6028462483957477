// The load generators the bench drives: wrk (HTTP/1.1) and h2load (HTTP/2, from nghttp2). Both
// are native programs with their own event loops, so they take a small, measured share of the
// machine instead of competing with the server for a Node event loop's worth of CPU.
import { spawnSync } from 'node:child_process';

export const INSTALL_INSTRUCTION = 'apt-get update && apt-get install -y wrk nghttp2-client';

export interface LoadTools {
  wrk: { path: string; version: string };
  h2load: { path: string; version: string };
}

export class MissingToolError extends Error {
  override readonly name = 'MissingToolError';
}

/** Finds wrk and h2load on PATH with their versions; throws MissingToolError saying how to install them. */
export function findLoadTools(): LoadTools {
  // `wrk -v` prints its version and usage, then exits with 1; h2load has --version.
  const wrk = probe('wrk', ['-v'], /^wrk\s+(\S+)/m);
  const h2load = probe('h2load', ['--version'], /^h2load\s+(\S+)/m);
  const missing = [wrk === undefined ? 'wrk' : undefined, h2load === undefined ? 'h2load (package nghttp2-client)' : undefined].filter((name) => name !== undefined);
  if (wrk === undefined || h2load === undefined) {
    throw new MissingToolError(
      `npm run bench needs the load generators wrk and h2load; not found on PATH: ${missing.join(', ')}.\n` +
        `On Debian or Ubuntu, as root: ${INSTALL_INSTRUCTION}\n` +
        '(elsewhere: wrk from https://github.com/wg/wrk, h2load from nghttp2, https://nghttp2.org)',
    );
  }
  return { wrk, h2load };
}

function probe(command: string, args: string[], version: RegExp): { path: string; version: string } | undefined {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 10_000 });
  if (result.error !== undefined) return undefined;
  const found = version.exec(`${result.stdout}\n${result.stderr}`);
  if (found === null) return undefined;
  const which = spawnSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' });
  return { path: which.stdout.trim() || command, version: found[1] as string };
}
