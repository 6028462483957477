// CPU time and resident memory of processes, read from /proc. CPU seconds per request tell where
// a request's cost lands (which layer, and how much the load generator takes from the machine),
// which throughput alone cannot. Where /proc does not exist the numbers are simply absent.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** The fields of /proc/<pid>/stat after the command name, which is parenthesised and may hold spaces. */
function statFields(pid: number | 'self'): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** User plus system CPU seconds the process has used so far, or undefined if unknown. */
export function processCpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  // utime and stime are fields 14 and 15 of the stat line; state (field 3) is index 0 here.
  const fields = statFields(pid);
  return fields === undefined ? undefined : (Number(fields[11]) + Number(fields[12])) / clockTicks();
}

/**
 * CPU seconds of this process's children that have exited and been waited for (cutime + cstime).
 * A load generator is a child that runs for exactly one measurement, so the growth of this
 * figure across its life is its whole CPU use, to its last instruction: sampling its own
 * /proc entry would miss whatever it did after the last sample.
 */
export function exitedChildrenCpuSeconds(): number | undefined {
  const fields = statFields('self');
  return fields === undefined ? undefined : (Number(fields[13]) + Number(fields[14])) / clockTicks();
}

/** Resident set size in bytes (VmRSS), or undefined if unknown. */
export function processRssBytes(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match === null ? undefined : Number(match[1]) * 1024;
  } catch {
    return undefined;
  }
}

export interface NamedProcess {
  name: string;
  pid: number | undefined;
}

/** CPU seconds each process has used so far, by name. */
export function cpuSnapshot(processes: NamedProcess[]): Record<string, number | undefined> {
  return Object.fromEntries(processes.map((p) => [p.name, processCpuSeconds(p.pid)]));
}

/**
 * Waits until the processes together use less than `idleFraction` of one core over a short
 * sample, or `maxSeconds` have passed; resolves to the seconds waited. Work a measurement left
 * behind (queued bcrypt hashes of abandoned logins, audit jobs, garbage collection) then does not
 * land in the next one.
 */
export async function waitForIdle(processes: NamedProcess[], options: { maxSeconds: number; idleFraction?: number; sampleMs?: number }): Promise<number> {
  const sampleMs = options.sampleMs ?? 200;
  const idle = options.idleFraction ?? 0.05;
  const started = performance.now();
  while ((performance.now() - started) / 1000 < options.maxSeconds) {
    const before = processes.map((p) => processCpuSeconds(p.pid) ?? 0);
    await sleep(sampleMs);
    const used = processes.reduce((sum, p, index) => sum + ((processCpuSeconds(p.pid) ?? 0) - (before[index] ?? 0)), 0);
    if (used / (sampleMs / 1000) < idle) break;
  }
  return (performance.now() - started) / 1000;
}
