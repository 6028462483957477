// A MySQL migration runs one statement at a time (its DDL commits statement by statement, so an
// attempt that stopped carries on after the last one done: migrations.ts). The split must not cut
// a statement at a semicolon that is text, nor lose one behind a comment.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { splitStatements } from '../../src/infrastructure/database/migrations.ts';

describe('splitStatements', () => {
  it('cuts at the semicolons between statements and drops pieces that are only comments', () => {
    expect(splitStatements('-- a table\nCREATE TABLE a (id INT);\n\n-- an index\nCREATE INDEX a_id ON a(id);\n-- the end\n').statements).toEqual([
      '-- a table\nCREATE TABLE a (id INT)',
      '-- an index\nCREATE INDEX a_id ON a(id)',
    ]);
    expect(splitStatements('SELECT 1').statements).toEqual(['SELECT 1']);
    expect(splitStatements(' ;; -- nothing\n/* at all */ ;\n# here\n').statements).toEqual([]);
  });

  it('keeps semicolons in strings, quoted names and comments inside their statement', () => {
    const script = [
      "INSERT INTO t (a, b) VALUES ('x;y', 'it''s; fine');",
      'INSERT INTO t (a) VALUES ("a \\" ; b");',
      "INSERT INTO t (a) VALUES ('back\\\\'); ",
      'CREATE TABLE `odd;name` (`c;1` INT);',
      'SELECT 1 /* not; here */ -- nor; here\n, 2;',
      'SELECT 3 # or; here\n;',
      'SELECT 4--5; SELECT 6',
    ].join('\n');
    expect(splitStatements(script).statements).toEqual([
      "INSERT INTO t (a, b) VALUES ('x;y', 'it''s; fine')",
      'INSERT INTO t (a) VALUES ("a \\" ; b")',
      "INSERT INTO t (a) VALUES ('back\\\\')",
      'CREATE TABLE `odd;name` (`c;1` INT)',
      'SELECT 1 /* not; here */ -- nor; here\n, 2',
      'SELECT 3 # or; here',
      // `--` starts a comment only before a blank: this is 4 minus minus 5.
      'SELECT 4--5',
      'SELECT 6',
    ]);
  });

  it("counts MySQL's and MariaDB's executable comments as statements", () => {
    expect(splitStatements('/*!40101 SET NAMES utf8mb4 */;\n/*M!100100 SET @@max_statement_time=1 */;\n/* only a comment */;').statements).toEqual([
      '/*!40101 SET NAMES utf8mb4 */',
      '/*M!100100 SET @@max_statement_time=1 */',
    ]);
  });

  it('keeps a script with a compound statement (a trigger, a routine) whole, its inner semicolons uncut', () => {
    const script = 'CREATE TABLE t (a INT, b INT);\nCREATE TRIGGER t_b BEFORE INSERT ON t FOR EACH ROW\nBEGIN\n  SET NEW.b = 1;\n  SET NEW.a = 2;\nEND;\n';
    expect(splitStatements(script)).toEqual({ statements: [script.trim()], whole: true });
    // A word that only contains it is not the keyword, nor is text in quotes or comments.
    expect(splitStatements("CREATE TABLE beginning (a INT); -- BEGIN\nINSERT INTO beginning VALUES ('BEGIN');").statements).toHaveLength(2);
  });

  it("splits each of the project's MySQL migrations into the statements it has", async () => {
    const dir = join(import.meta.dirname, '..', '..', 'prisma', 'mysql', 'migrations');
    const names = (await readdir(dir)).filter((name) => /^\d+_/.test(name));
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) {
      const { statements } = splitStatements(await readFile(join(dir, name, 'migration.sql'), 'utf8'));
      expect(statements.length, name).toBeGreaterThan(0);
      for (const statement of statements) expect(statement, name).toMatch(/^(--[^\n]*\n|\s)*(CREATE|ALTER|DROP|INSERT|UPDATE)\b/);
    }
  });
});
