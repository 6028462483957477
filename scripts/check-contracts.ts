// Refuses breaking changes to the contracts: the protos (`buf breaking`, WIRE_JSON as buf.yaml
// says) and openapi.yaml (scripts/openapi-breaking.ts), compared with the main branch. Run by
// `npm test` and `npm run check:contracts`.
//
// What is compared with what:
// - the baseline is CONTRACT_BASE when set (any git revision); otherwise the merge-base of HEAD
//   with the upstream branch (`@{upstream}`, else origin/main, else main). When HEAD is that
//   branch's tip itself — CI's fresh clone of main, or a clone with nothing committed yet — the
//   newest commit is the change under test, so the baseline is its parent, HEAD~1.
// - every commit after the baseline that touches a contract is checked against its own parent,
//   and the working tree against HEAD when its contracts differ. Each step is judged alone, so
//   an override names the one commit that breaks on purpose.
// - internal protos (proto/arcana/internal/**) are guarded like the public ones: a rolling deploy
//   runs old and new layer processes side by side, so a controller of one version calls a
//   service layer of the other.
//
// A deliberate break: commit it with a `Contract-Break: <reason>` trailer in the message (git
// commit --trailer 'Contract-Break=…'). The check then lists the breaks as accepted, with the
// reason, and passes; the trailer stays in the history for review. Uncommitted changes cannot
// carry one: commit them.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yaml from 'js-yaml';
import { findBreakingChanges } from './openapi-breaking.ts';

const root = join(import.meta.dirname, '..');
const buf = join(root, 'node_modules', '.bin', 'buf');
const CONTRACT_PATHS = ['proto', 'buf.yaml', 'openapi.yaml'];
const TRAILER = 'Contract-Break';

function git(...args: string[]): string {
  return execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

function gitOk(...args: string[]): boolean {
  return spawnSync('git', args, { cwd: root, stdio: 'ignore' }).status === 0;
}

function revision(ref: string): string | undefined {
  const result = spawnSync('git', ['rev-parse', '--verify', '--quiet', `${ref}^{commit}`], { cwd: root, encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : undefined;
}

interface Baseline {
  commit: string;
  why: string;
}

function findBaseline(): Baseline | undefined {
  const explicit = process.env.CONTRACT_BASE;
  if (explicit !== undefined && explicit !== '') {
    const commit = revision(explicit);
    if (commit === undefined) throw new Error(`CONTRACT_BASE=${explicit} is not a commit in this repository`);
    return { commit, why: `CONTRACT_BASE=${explicit}` };
  }
  const head = git('rev-parse', 'HEAD');
  for (const ref of ['@{upstream}', 'origin/main', 'main']) {
    const upstream = revision(ref);
    if (upstream === undefined) continue;
    const base = git('merge-base', 'HEAD', upstream);
    if (base !== head) return { commit: base, why: `merge-base with ${ref}` };
    const parent = revision('HEAD~1');
    if (parent !== undefined) return { commit: parent, why: `HEAD is ${ref}'s tip: its parent, HEAD~1` };
    // A shallow clone has no parent to compare with: say so rather than pass silently.
    if (git('rev-parse', '--is-shallow-repository') === 'true') {
      throw new Error('this is a shallow clone: fetch the history (git fetch --unshallow) or set CONTRACT_BASE');
    }
    return undefined;
  }
  throw new Error('no main branch to compare with (origin/main or main): set CONTRACT_BASE to a revision');
}

/** A state of the contracts: a commit, or the working tree (`undefined`). */
type State = string | undefined;

interface Step {
  label: string;
  base: string;
  current: State;
  /** The Contract-Break trailer's reason, when the commit has one. */
  accepted: string | undefined;
}

function touchesContracts(from: string, to: State): boolean {
  if (to === undefined) {
    const untracked = git('ls-files', '--others', '--exclude-standard', '--', ...CONTRACT_PATHS);
    return untracked !== '' || !gitOk('diff', '--quiet', from, '--', ...CONTRACT_PATHS);
  }
  return !gitOk('diff', '--quiet', from, to, '--', ...CONTRACT_PATHS);
}

function stepsSince(baseline: string): Step[] {
  const steps: Step[] = [];
  const commits = git('rev-list', '--reverse', '--first-parent', `${baseline}..HEAD`).split('\n').filter(Boolean);
  for (const commit of commits) {
    const parent = git('rev-parse', `${commit}~1`);
    if (!touchesContracts(parent, commit)) continue;
    const reason = git('log', '-1', `--format=%(trailers:key=${TRAILER},valueonly,separator=%x20)`, commit);
    steps.push({ label: `commit ${git('log', '-1', '--format=%h "%s"', commit)}`, base: parent, current: commit, accepted: reason === '' ? undefined : reason });
  }
  const head = git('rev-parse', 'HEAD');
  if (touchesContracts(head, undefined)) steps.push({ label: 'working tree', base: head, current: undefined, accepted: undefined });
  return steps;
}

/** Writes a commit's contract files to a temporary directory, or undefined if it has none. */
function checkout(commit: string, into: string): boolean {
  const present = CONTRACT_PATHS.filter((path) => gitOk('cat-file', '-e', `${commit}:${path}`));
  if (present.length === 0) return false;
  const archive = execFileSync('git', ['archive', commit, '--', ...present], { cwd: root, maxBuffer: 64 * 1024 * 1024 });
  execFileSync('tar', ['-x', '-C', into], { input: archive });
  return true;
}

function readOpenApi(dir: string): unknown {
  return yaml.load(readFileSync(join(dir, 'openapi.yaml'), 'utf8'));
}

function protoBreaks(currentDir: string, baseDir: string): string[] {
  const result = spawnSync(buf, ['breaking', currentDir, '--against', baseDir, '--error-format', 'text'], { cwd: root, encoding: 'utf8' });
  if (result.status === 0) return [];
  const lines = `${result.stdout}${result.stderr}`.split('\n').filter(Boolean);
  // buf names files by the directory it read them from; the temporary one means nothing to a reader.
  return lines.map((line) => line.replace(`${currentDir}/`, '').replace(`${baseDir}/`, ''));
}

function check(step: Step): string[] {
  const work = mkdtempSync(join(tmpdir(), 'arcana-contracts-'));
  try {
    const baseDir = join(work, 'base');
    const currentDir = step.current === undefined ? root : join(work, 'current');
    mkdirSync(baseDir);
    if (!checkout(step.base, baseDir)) return [];
    if (step.current !== undefined) {
      mkdirSync(currentDir);
      checkout(step.current, currentDir);
    }
    const present = (dir: string, path: string) => existsSync(join(dir, path));
    const breaks: string[] = [];
    if (present(baseDir, 'buf.yaml') && present(currentDir, 'buf.yaml')) {
      breaks.push(...protoBreaks(currentDir, baseDir).map((line) => `proto: ${line}`));
    }
    if (present(baseDir, 'openapi.yaml')) {
      if (!present(currentDir, 'openapi.yaml')) breaks.push('openapi: openapi.yaml removed');
      else breaks.push(...findBreakingChanges(readOpenApi(baseDir), readOpenApi(currentDir)).map((change) => `openapi: ${change.location}: ${change.message}`));
    }
    return breaks;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function main(): number {
  const baseline = findBaseline();
  if (baseline === undefined) {
    console.log('contracts: no earlier commit to compare with; nothing to check');
    return 0;
  }
  const steps = stepsSince(baseline.commit);
  console.log(`contracts: baseline ${baseline.commit.slice(0, 10)} (${baseline.why}); ${steps.length} change(s) to the contracts to check`);
  let refused = 0;
  for (const step of steps) {
    const breaks = check(step);
    if (breaks.length === 0) {
      console.log(`  ok        ${step.label}`);
      continue;
    }
    if (step.accepted !== undefined) {
      console.log(`  accepted  ${step.label}: ${breaks.length} breaking change(s), ${TRAILER}: ${step.accepted}`);
    } else {
      refused += 1;
      console.log(`  BREAKING  ${step.label}: ${breaks.length} breaking change(s)`);
    }
    for (const line of breaks) console.log(`      ${line}`);
  }
  if (refused > 0) {
    console.log(
      [
        '',
        'Existing clients would break. Make the change additive (a new field, operation or enum value;',
        'reserve what you remove), or, if the break is deliberate, commit it with a trailer saying why:',
        `  git commit --trailer '${TRAILER}=<who is affected and how they move>'`,
      ].join('\n'),
    );
    return 1;
  }
  return 0;
}

try {
  process.exitCode = main();
} catch (error) {
  console.error(`contracts: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 2;
}
