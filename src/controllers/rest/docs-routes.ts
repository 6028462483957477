// The API reference for people: `/docs` renders openapi.yaml with Redoc, `/openapi.yaml` is the
// contract itself, and `/docs/proto/` lists the public .proto files with their services' and
// RPCs' comments (the RPC reference), each file linked as served.
//
// Nothing comes from a CDN: Redoc's standalone bundle is served from node_modules, and the page
// starts it from a script file of ours, so the page's policy allows no inline script. These are
// not API operations: they are served before the OpenAPI validator and are not in openapi.yaml,
// like a static site next to the API.
import { Router, type NextFunction, type Request, type Response } from 'express';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, sep } from 'node:path';
import { StaticBody } from './static-body.ts';

const ROOT = join(import.meta.dirname, '..', '..', '..');
const PROTO_ROOT = join(ROOT, 'proto');
const ASSETS = join(import.meta.dirname, 'docs');
const REDOC_BUNDLE = createRequire(import.meta.url).resolve('redoc/bundles/redoc.standalone.js');

/**
 * The policy of the Redoc page. Scripts only from this origin, and nothing reachable but this
 * origin. Two allowances Redoc needs: `style-src 'unsafe-inline'`, because it styles itself with
 * styled-components, which injects <style> elements at run time (no nonce is possible for a
 * static page); and `worker-src blob:`, because its search index runs in a Web Worker that the
 * bundle builds from a blob: URL. Inline styles cannot run code; inline scripts stay refused.
 */
export const DOCS_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "font-src 'self' data:",
  "connect-src 'self'",
  "worker-src 'self' blob:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The policy of the plain pages (the proto index): no script at all, no inline style. */
const STATIC_CSP = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** The public .proto files (the internal layer contracts are not the API), by path under proto/. */
export function publicProtoFiles(): string[] {
  const entries = readdirSync(PROTO_ROOT, { recursive: true, encoding: 'utf8' });
  return entries
    .filter((entry) => entry.endsWith('.proto'))
    .map((entry) => entry.split(sep).join('/'))
    .filter((entry) => !entry.startsWith('arcana/internal/'))
    .sort();
}

interface ProtoService {
  name: string;
  comment: string;
  rpcs: { name: string; signature: string; comment: string }[];
}

/**
 * The services of a .proto file with the comments above them and above each RPC. A line-based
 * reading of files this repository writes (buf lint holds them to one style), not a parser.
 */
export function protoServices(source: string): ProtoService[] {
  const services: ProtoService[] = [];
  let comment: string[] = [];
  for (const raw of source.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('//')) {
      comment.push(line.replace(/^\/\/ ?/, ''));
      continue;
    }
    const service = /^service\s+(\w+)\s*\{/.exec(line);
    const rpc = /^rpc\s+(\w+)\s*(\(.*?\)\s*returns\s*\(.*?\))/.exec(line);
    if (service !== null) services.push({ name: service[1] ?? '', comment: comment.join('\n'), rpcs: [] });
    else if (rpc !== null) services.at(-1)?.rpcs.push({ name: rpc[1] ?? '', signature: (rpc[2] ?? '').replace(/\s+/g, ' '), comment: comment.join('\n') });
    comment = [];
  }
  return services;
}

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

function renderProtoIndex(files: string[]): string {
  const sections: string[] = [];
  for (const file of files) {
    const services = protoServices(readFileSync(join(PROTO_ROOT, file), 'utf8'));
    const body = services
      .map(
        (service) =>
          `<h3>${escapeHtml(service.name)}</h3><p class="comment">${escapeHtml(service.comment)}</p><dl>` +
          service.rpcs.map((rpc) => `<dt><code>rpc ${escapeHtml(rpc.name)}${escapeHtml(rpc.signature)}</code></dt><dd class="comment">${escapeHtml(rpc.comment)}</dd>`).join('') +
          '</dl>',
      )
      .join('');
    sections.push(`<section><h2><a href="${escapeHtml(file)}">${escapeHtml(file)}</a></h2>${body}</section>`);
  }
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Arcana Cloud RPC reference</title>
<link rel="stylesheet" href="../assets/proto.css"></head>
<body><h1>Arcana Cloud RPC reference</h1>
<p>The Connect, gRPC and gRPC-Web API, as its .proto files define it (each file is linked). The REST API is at <a href="../">/docs</a>; errors carry <code>google.rpc.BadRequest</code> and <code>google.rpc.RetryInfo</code> details.</p>
${sections.join('\n')}
</body></html>`;
}

/** GET /docs, its assets, /openapi.yaml and /docs/proto/. Reads what it serves once, at start-up. */
export function createDocsRoutes(apiSpecPath: string): Router {
  // Strict: /docs/proto/ and /docs/proto are different pages to a browser (the index's relative
  // links resolve against the first), so the second must be the redirect below, not the index.
  const router = Router({ strict: true });
  const page = StaticBody.of(readFileSync(join(ASSETS, 'index.html')), 'html');
  const spec = StaticBody.of(readFileSync(apiSpecPath), 'application/yaml; charset=utf-8');
  const protoFiles = publicProtoFiles();
  const protoIndex = StaticBody.of(renderProtoIndex(protoFiles), 'html');
  // Only the files listed: the path never reaches the file system as the client wrote it.
  const protos = new Map(protoFiles.map((file) => [file, StaticBody.file(join(PROTO_ROOT, ...file.split('/')), 'text/plain; charset=utf-8')]));
  const html = (body: StaticBody, csp: string) => (req: Request, res: Response, next: NextFunction) => {
    res.setHeader('content-security-policy', csp);
    body.send(req, res, next);
  };
  // Served whole: a Range is ignored (see StaticBody), and no client of these files needs part of one.
  const asset = (file: string, type: string) => {
    const body = StaticBody.file(file, type);
    return (req: Request, res: Response, next: NextFunction) => {
      res.setHeader('cache-control', 'public, max-age=3600');
      body.send(req, res, next);
    };
  };

  router.get('/docs', html(page, DOCS_CSP));
  router.get('/docs/', (_req, res) => res.redirect(301, '/docs'));
  router.get('/docs/assets/redoc.standalone.js', asset(REDOC_BUNDLE, 'text/javascript'));
  router.get('/docs/assets/docs.js', asset(join(ASSETS, 'docs.js'), 'text/javascript'));
  router.get('/docs/assets/proto.css', asset(join(ASSETS, 'proto.css'), 'text/css'));
  router.get('/openapi.yaml', (req, res, next) => {
    res.setHeader('cache-control', 'no-cache');
    spec.send(req, res, next);
  });
  router.get('/docs/proto/', html(protoIndex, STATIC_CSP));
  router.get('/docs/proto', (_req, res) => res.redirect(301, '/docs/proto/'));
  // Any case, as Express matches the other routes: the index's links resolve under whatever
  // case it was opened with.
  router.get(/^\/docs\/proto\/(.+\.proto)$/i, (req, res, next) => {
    const file = protos.get((req.params as unknown as Record<string, string>)[0] ?? '');
    if (file === undefined) {
      next();
      return;
    }
    res.setHeader('content-security-policy', STATIC_CSP);
    file.send(req, res, next);
  });
  return router;
}
