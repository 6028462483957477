import type { NextFunction, Request, Response } from 'express';
import { readFile, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { brotliCompress, constants, gzip } from 'node:zlib';
import { entityTagOf } from './entity-tag.ts';

const brotli = promisify(brotliCompress);
const gzipped = promisify(gzip);

/** Bodies shorter than this go out as they are (the compression middleware's own threshold). */
const CODING_THRESHOLD_BYTES = 1024;

export type Coding = 'br' | 'gzip';

/** Codes a body: Brotli at quality 9, gzip at level 9 (made once per body, so the best affordable). */
export type Coder = (coding: Coding, bytes: Buffer) => Promise<Buffer>;

const zlibCoder: Coder = (coding, bytes) =>
  coding === 'br' ? brotli(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 9, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length } }) : gzipped(bytes, { level: 9 });

/** The answers whose body is a StaticBody's: the compression middleware leaves them alone. */
const precoded = new WeakSet<Response>();

/** For the compression middleware's filter: whether this answer's body is coded already, or must stay as it is. */
export function isPrecoded(res: Response): boolean {
  return precoded.has(res);
}

interface Representation {
  bytes: Buffer;
  tag: string;
  lastModified: Date | undefined;
}

/**
 * A body sent unchanged to everyone (the console's files, the API reference and its assets, the
 * contract, the .proto files), read once and compressed once per coding, the first time a client
 * takes that coding. The compression middleware coded it again for every request: those paths are
 * outside the rate limit, and clients that read their answers on keep-alive connections made the
 * process compress the console's 156 KB script with Brotli for each (7.6–12.6 ms of CPU per
 * 120-byte request, RSS 166 MB → 790 MB from one address, left there afterwards; helper 202), and
 * the 1.1 MB Redoc bundle cost 55 ms each. Now the coded copies are made once, at Brotli quality 9
 * and gzip level 9, on the thread pool.
 *
 * Conditional requests are answered as RFC 9110 §13.2.2 orders them: If-Match (strong comparison,
 * so the weak tag never meets it; `*` does) and If-Unmodified-Since (files only: a body built in
 * memory has no modification date, and the header is then ignored) fail with 412; If-None-Match
 * and If-Modified-Since give 304 (Express's freshness check). Range is ignored: the body goes out
 * whole (RFC 9110 §14.2 allows it).
 */
export class StaticBody {
  readonly #type: string;
  readonly #read: () => Promise<{ bytes: Buffer; modified?: Date | undefined }>;
  #loaded: Promise<Representation> | undefined;
  readonly #coded = new Map<Coding, Promise<Buffer>>();
  readonly #coder: Coder;

  private constructor(type: string, read: () => Promise<{ bytes: Buffer; modified?: Date | undefined }>, coder: Coder) {
    this.#type = type;
    this.#read = read;
    this.#coder = coder;
  }

  /** A file's content, read when first asked for. */
  static file(path: string, type: string, coder: Coder = zlibCoder): StaticBody {
    return new StaticBody(
      type,
      async () => {
        const [bytes, info] = await Promise.all([readFile(path), stat(path)]);
        return { bytes, modified: info.mtime };
      },
      coder,
    );
  }

  /** Content already in memory, which has no modification date. */
  static of(content: string | Buffer, type: string, coder: Coder = zlibCoder): StaticBody {
    const bytes = typeof content === 'string' ? Buffer.from(content) : content;
    return new StaticBody(type, () => Promise.resolve({ bytes }), coder);
  }

  /** Answers `req` with the body, in the best coding the client takes; errors go to `next`. */
  send(req: Request, res: Response, next: NextFunction): void {
    precoded.add(res);
    this.#send(req, res).catch(next);
  }

  async #send(req: Request, res: Response): Promise<void> {
    const body = await this.#representation();
    res.setHeader('etag', body.tag);
    if (body.lastModified !== undefined) res.setHeader('last-modified', body.lastModified.toUTCString());
    if (preconditionFails(req, body)) throw Object.assign(new Error('precondition failed'), { status: 412, expose: true });
    // A 304 names no coding (RFC 9110 §15.4.5): every coding shares the weak tag, and a cache
    // refreshing its stored copy's headers from the 304 would relabel it (helper 203).
    if (req.fresh) {
      res.status(304).end();
      return;
    }
    res.type(this.#type);
    const coding = body.bytes.length < CODING_THRESHOLD_BYTES ? undefined : codingFor(req.headers['accept-encoding']);
    if (coding === undefined) {
      res.send(body.bytes);
      return;
    }
    const bytes = await this.#codedAs(coding, body.bytes);
    res.setHeader('content-encoding', coding);
    res.send(bytes);
  }

  #representation(): Promise<Representation> {
    this.#loaded ??= this.#read().then(({ bytes, modified }) => ({
      bytes,
      tag: entityTagOf(bytes),
      // HTTP dates have whole seconds; compared as sent, a file's milliseconds would fail them.
      lastModified: modified === undefined ? undefined : new Date(Math.floor(modified.getTime() / 1000) * 1000),
    }));
    // A failed read is not kept: the next request tries again.
    this.#loaded.catch(() => (this.#loaded = undefined));
    return this.#loaded;
  }

  #codedAs(coding: Coding, bytes: Buffer): Promise<Buffer> {
    let coded = this.#coded.get(coding);
    if (coded === undefined) {
      coded = this.#coder(coding, bytes);
      this.#coded.set(coding, coded);
      coded.catch(() => this.#coded.delete(coding));
    }
    return coded;
  }
}

/** RFC 9110 §13.2.2 steps 1–2: If-Match, else If-Unmodified-Since. */
function preconditionFails(req: Request, body: Representation): boolean {
  const ifMatch = req.headers['if-match'];
  if (ifMatch !== undefined) return ifMatch.trim() !== '*';
  const since = req.headers['if-unmodified-since'];
  if (since === undefined || body.lastModified === undefined) return false;
  const date = Date.parse(since);
  return !Number.isNaN(date) && body.lastModified.getTime() > date;
}

/**
 * The coding to send for an Accept-Encoding header: Brotli or gzip, whichever the client weighs
 * higher (Brotli on a tie, as the compression middleware prefers it), else none. No header, or
 * one that takes neither, gets the body as it is.
 */
export function codingFor(header: string | undefined): Coding | undefined {
  if (header === undefined || header === '') return undefined;
  const weights = new Map<string, number>();
  for (const item of header.split(',')) {
    const [name = '', ...parameters] = item.split(';');
    let weight = 1;
    for (const parameter of parameters) {
      const match = /^\s*q\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?)\s*$/i.exec(parameter);
      if (match !== null) weight = Number(match[1]);
    }
    const coding = name.trim().toLowerCase();
    if (!weights.has(coding)) weights.set(coding, weight);
  }
  const weightOf = (coding: string) => weights.get(coding) ?? weights.get('*') ?? 0;
  const [br, gzipWeight] = [weightOf('br'), weightOf('gzip')];
  if (br > 0 && br >= gzipWeight) return 'br';
  if (gzipWeight > 0) return 'gzip';
  return undefined;
}
