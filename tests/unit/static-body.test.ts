// The static files (console, API reference, contract, protos) are coded once per coding, not per
// request: the compression middleware re-coded the console's script with Brotli for every
// request, outside the rate limit (helper 202: 7.6–12.6 ms of CPU per 120-byte request, RSS
// 166 → 790 MB from one address). A real Express app and real zlib; only the coder is counted.
import express from 'express';
import type { AddressInfo } from 'node:net';
import { brotliCompressSync, brotliDecompressSync, gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codingFor, StaticBody, type Coder } from '../../src/controllers/rest/static-body.ts';

const text = Array.from({ length: 2_000 }, (_, index) => `line ${index} of a static file\n`).join('');
const coded: string[] = [];
const counting: Coder = async (coding, bytes) => {
  coded.push(coding);
  await new Promise((resolve) => setTimeout(resolve, 20));
  return coding === 'br' ? brotliCompressSync(bytes) : gzipSync(bytes);
};

let base: string;
let close: () => void;

beforeAll(async () => {
  const app = express();
  const body = StaticBody.of(text, 'text/plain; charset=utf-8', counting);
  app.get('/file', (req, res, next) => body.send(req, res, next));
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = () => server.close();
});

afterAll(() => close());

/** The answer as sent: fetch would decode it. */
async function get(headers: Record<string, string>) {
  const { request } = await import('node:http');
  return new Promise<{ status: number; encoding: string | undefined; tag: string | undefined; body: string }>((resolve, reject) => {
    const req = request(`${base}/file`, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        const encoding = res.headers['content-encoding'];
        const body = encoding === 'br' ? brotliDecompressSync(raw) : encoding === 'gzip' ? gunzipSync(raw) : raw;
        resolve({ status: res.statusCode ?? 0, encoding, tag: res.headers.etag, body: body.toString() });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('a static body', () => {
  it('when many clients ask for it at once in every coding, then each coding is made once and every answer is the body', async () => {
    const asked: [string, string | undefined][] = [
      ['br', 'br'],
      ['gzip', 'gzip'],
      ['gzip, deflate, br', 'br'],
      ['gzip;q=1, br;q=0.5', 'gzip'],
      ['deflate', undefined],
      ['identity', undefined],
      ['*', 'br'],
      ['br;q=0, *;q=0.2', 'gzip'],
    ];
    const answers = await Promise.all(Array.from({ length: 10 }, () => asked.map(([accept]) => get({ 'accept-encoding': accept }))).flat());
    expect(coded.sort()).toEqual(['br', 'gzip']);
    const tags = new Set(answers.map((answer) => answer.tag));
    expect(tags.size).toBe(1);
    answers.forEach((answer, index) => {
      const [accept, expected] = asked[index % asked.length]!;
      expect({ accept, status: answer.status, encoding: answer.encoding, same: answer.body === text }).toEqual({ accept, status: 200, encoding: expected, same: true });
    });
  });

  it('when a request names preconditions, then If-Match fails but for *, and a held tag revalidates with 304', async () => {
    const { tag } = await get({});
    expect((await get({ 'if-match': tag ?? '' })).status).toBe(412);
    expect((await get({ 'if-match': '*' })).status).toBe(200);
    // A 304 names no coding, whichever the client takes (helper 203: it said br or gzip).
    for (const accept of ['br', 'gzip', 'identity']) {
      const revalidated = await get({ 'if-none-match': tag ?? '', 'accept-encoding': accept });
      expect({ accept, status: revalidated.status, encoding: revalidated.encoding, tag: revalidated.tag }).toEqual({ accept, status: 304, encoding: undefined, tag });
    }
    // A body made in memory has no date: If-Unmodified-Since is ignored (RFC 9110 §13.1.4).
    expect((await get({ 'if-unmodified-since': 'Mon, 01 Jan 2001 00:00:00 GMT' })).status).toBe(200);
  });
});

describe('codingFor', () => {
  it('when the client weighs the codings, then the heavier one, Brotli on a tie, none when neither is taken', () => {
    expect(codingFor(undefined)).toBeUndefined();
    expect(codingFor('')).toBeUndefined();
    expect(codingFor('GZIP')).toBe('gzip');
    expect(codingFor('br;q=0.5, gzip;q=0.8')).toBe('gzip');
    expect(codingFor('br ; q=1.0 , gzip')).toBe('br');
    expect(codingFor('gzip;q=0, br;q=0')).toBeUndefined();
    expect(codingFor('*;q=0')).toBeUndefined();
    expect(codingFor('x'.repeat(10_000))).toBeUndefined();
  });
});
