// CPU time of the server processes, read from /proc. With it a row says whether the servers were
// busy (CPU-bound) or mostly waiting (latency-bound: a protocol or I/O stall), which throughput
// alone cannot tell. Where /proc does not exist the numbers are simply absent.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

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

/** User plus system CPU seconds the process has used so far, or undefined if unknown. */
export function processCpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    // Fields after the command name, which is parenthesised and may itself contain spaces:
    // state is field 3, so utime (14) and stime (15) are at indexes 11 and 12 here.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicks();
  } catch {
    return undefined;
  }
}

/** Starts measuring `processes`; the returned function gives each one's CPU use since, in % of one core. */
export function measureCpu(processes: { name: string; pid: number | undefined }[]): () => Record<string, number> {
  const start = performance.now();
  const before = processes.map((p) => processCpuSeconds(p.pid));
  return () => {
    const seconds = (performance.now() - start) / 1000;
    const usage: Record<string, number> = {};
    processes.forEach((p, index) => {
      const was = before[index];
      const now = processCpuSeconds(p.pid);
      if (was !== undefined && now !== undefined && seconds > 0) usage[p.name] = ((now - was) / seconds) * 100;
    });
    return usage;
  };
}
