// ESLint flat config (ESLint 10 loads eslint.config.js natively; an eslint.config.ts would need
// jiti or an unstable flag, so this one file is JavaScript). Every TypeScript file in the
// repository is linted with type information: src/, scripts/, bench/, tests/, the root configs and
// any directory added later (console/ …) — the globs are not a list of directories. typescript-eslint's
// project service finds each file's nearest tsconfig.json, so a directory with its own tsconfig is
// linted against that one, and a .ts file that no tsconfig includes is reported, not skipped.
//
// The base is typescript-eslint's strict-type-checked and stylistic-type-checked sets (what
// typescript-eslint recommends for teams fluent in TypeScript, and what it lints itself with),
// which include no-floating-promises, no-misused-promises, await-thenable and the no-unsafe-*
// family. eslint-config-prettier comes last and turns off every rule that would argue with
// Prettier about layout.
//
// Rules turned off, and why (README: "Linting and formatting"):
// - @typescript-eslint/require-await: an in-memory implementation of a Promise-returning interface
//   (MemoryCache, the in-memory rate limiter, test fakes) is written `async` with no `await` on
//   purpose: that makes a throw inside it a rejection, as in the Redis implementation, which
//   `return Promise.resolve(…)` would not.
// - @typescript-eslint/no-non-null-assertion: with noUncheckedIndexedAccess, `x[i]!` is the
//   visible marker on an index read that the surrounding code has proven in range (regex groups,
//   split(…)[0], a loop bound). no-unnecessary-type-assertion still reports a `!` that is not needed.
// - @typescript-eslint/non-nullable-type-assertion-style: it asks for `x!` where the code writes
//   `x as T`, the opposite of no-non-null-assertion's preference; the two conflict, keep the cast.
// - In tests/ only, no-unsafe-member-access and no-unsafe-assignment: supertest's `response.body`
//   and Vitest's asymmetric matchers (`expect.any(Number)`, `expect.stringContaining`) are typed
//   `any` by those libraries, and the tests read the body to assert its shape at run time, where a
//   wrong access fails the test. Passing such a value on (no-unsafe-argument, -call, -return) is
//   still reported in tests.
// Rules with options changed from the strict set, and why:
// - restrict-template-expressions allows numbers (`${port}`, `${ms} ms`): the recommended set's
//   default; booleans, nullish values, objects and `any` are still reported.
// - dot-notation allows `record['key']` on index signatures: the code writes a key that may be
//   absent (parsed YAML, JSON, env maps) in brackets on purpose.
// - no-confusing-void-expression ignores `() => voidCall()` arrows and `return voidCall()` in
//   functions that return void: both are common shorthand that hides nothing.
// - no-namespace allows `declare global { namespace Express { … } }`: the augmentation point
//   Express's types define for `res.locals`; namespaces in code are still reported.
// - prefer-const ignores a `let` read by a closure before its one assignment (a token getter
//   handed to a client that is used before the login that sets the token): `const` would be a
//   temporal-dead-zone error there.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import prettier from 'eslint-config-prettier/flat';
import tseslint from 'typescript-eslint';

export default defineConfig(
  // Generated code (checked for drift against its generators instead), measured data, and the
  // output of any bundler.
  globalIgnores(['gen/', 'bench/results/', '**/dist/', '**/build/', '**/coverage/', '**/*.min.js', '**/*.bundle.js']),
  js.configs.recommended,
  {
    // The few plain scripts that run in a browser (the /docs page's starter).
    files: ['src/controllers/rest/docs/*.js'],
    languageOptions: { globals: { document: 'readonly', window: 'readonly' } },
  },
  {
    files: ['**/*.{ts,mts,cts,tsx}'],
    extends: [tseslint.configs.strictTypeChecked, tseslint.configs.stylisticTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // Part of the sets above; named here because they are the reason this config exists.
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      // The code already marks type-only imports inline (`import { x, type Y }`), and
      // verbatimModuleSyntax makes the distinction matter at run time.
      '@typescript-eslint/consistent-type-imports': ['error', { prefer: 'type-imports', fixStyle: 'inline-type-imports' }],
      // `import { type A } from 'm'` still loads 'm' under verbatimModuleSyntax: write `import type`.
      '@typescript-eslint/no-import-type-side-effects': 'error',

      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/non-nullable-type-assertion-style': 'off',
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      '@typescript-eslint/dot-notation': ['error', { allowIndexSignaturePropertyAccess: true }],
      '@typescript-eslint/no-confusing-void-expression': ['error', { ignoreArrowShorthand: true, ignoreVoidReturningFunctions: true }],
      '@typescript-eslint/no-namespace': ['error', { allowDeclarations: true }],
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
    },
  },
  {
    files: ['tests/**/*.{ts,mts,cts,tsx}'],
    rules: {
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
    },
  },
  prettier,
);
