// Builds the admin console (console/) into console/dist/: one minified ES module bundled with
// esbuild from console/src/main.ts, plus the static page and stylesheet. The output is committed
// so that `npm start` serves it without devDependencies; esbuild's output is deterministic, and
// tests/integration/console-bundle.test.ts fails when the committed bundle is not a fresh build.
// `npm run build:console`; `--out DIR` builds into DIR instead.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';

const root = join(import.meta.dirname, '..');
const { values } = parseArgs({ options: { out: { type: 'string' }, quiet: { type: 'boolean' } } });
const out = values.out === undefined ? join(root, 'console', 'dist') : resolve(values.out);

mkdirSync(out, { recursive: true });
await build({
  absWorkingDir: root,
  entryPoints: ['console/src/main.ts'],
  outfile: join(out, 'console.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022', 'chrome111', 'firefox111', 'safari16.4'],
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  tsconfig: 'console/tsconfig.json',
  logLevel: 'warning',
});
for (const name of ['index.html', 'console.css']) copyFileSync(join(root, 'console', 'static', name), join(out, name));

if (values.quiet !== true) {
  for (const name of ['console.js', 'console.css', 'index.html']) {
    const content = readFileSync(join(out, name));
    console.log(`${name}: ${content.length} bytes, ${gzipSync(content, { level: 9 }).length} gzipped`);
  }
}
