#!/usr/bin/env node
// A tiny static file server for the demo page: serves www/ on 127.0.0.1.
//
//   node tools/serve.mjs [--port N] [--root DIR] [--quiet]
//
// --port 0 (the default) picks a free port. The first line on stdout is the
// page's URL (scripts read it). No directory listings, nothing outside the
// root, GET and HEAD only, Range requests for big shards, and the MIME types
// a browser insists on (application/wasm for streaming compilation,
// application/manifest+json for the web app manifest, text/javascript for
// modules and the service worker).
//
// Also usable as a module: `const { server, url, close } = await serve({ root, port })`.
import { createServer } from 'node:http';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.bin': 'application/octet-stream',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.ts': 'text/plain; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
};

function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header || '');
  if (!m) return null;
  let start, end;
  if (m[1] === '' && m[2] === '') return null;
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start > end || start >= size) return 'unsatisfiable';
  return { start, end };
}

export async function serve({ root = 'www', port = 0, host = '127.0.0.1', quiet = true, onRequest = null } = {}) {
  const rootDir = resolve(root);
  const server = createServer(async (req, res) => {
    const log = (status) => {
      if (!quiet) console.log(`${status} ${req.method} ${req.url}`);
      onRequest?.({ method: req.method, url: req.url, status });
    };
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { Allow: 'GET, HEAD' });
        res.end();
        return log(405);
      }
      const url = new URL(req.url, 'http://localhost');
      let rel;
      try { rel = decodeURIComponent(url.pathname); } catch { rel = null; }
      if (rel === null || rel.includes('\0')) {
        res.writeHead(400); res.end('bad path'); return log(400);
      }
      let file = normalize(join(rootDir, rel));
      if (file !== rootDir && !file.startsWith(rootDir + sep)) {
        res.writeHead(403); res.end('forbidden'); return log(403);
      }
      let st;
      try {
        st = await stat(file);
        if (st.isDirectory()) {
          if (!url.pathname.endsWith('/')) {
            res.writeHead(301, { Location: url.pathname + '/' + url.search });
            res.end();
            return log(301);
          }
          file = join(file, 'index.html');
          st = await stat(file);
        }
      } catch {
        res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end('not found');
        return log(404);
      }
      const type = MIME[extname(file).toLowerCase()] || 'application/octet-stream';
      const etag = `W/"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
      if (req.headers['if-none-match'] === etag && !req.headers.range) {
        res.writeHead(304, { ETag: etag, 'Cache-Control': 'no-cache' });
        res.end();
        return log(304);
      }
      const headers = {
        ETag: etag,
        'Content-Type': type,
        'Accept-Ranges': 'bytes',
        'Last-Modified': st.mtime.toUTCString(),
        // Always revalidate: the service worker does the caching, and a
        // developer rebuilding www/pkg must never be served a stale copy.
        'Cache-Control': 'no-cache',
        'X-Content-Type-Options': 'nosniff',
      };
      if (file.endsWith(`${sep}sw.js`)) headers['Service-Worker-Allowed'] = '/';
      let status = 200;
      let range = null;
      if (req.headers.range) {
        range = parseRange(req.headers.range, st.size);
        if (range === 'unsatisfiable') {
          res.writeHead(416, { 'Content-Range': `bytes */${st.size}` });
          res.end();
          return log(416);
        }
      }
      if (range) {
        status = 206;
        headers['Content-Range'] = `bytes ${range.start}-${range.end}/${st.size}`;
        headers['Content-Length'] = range.end - range.start + 1;
      } else {
        headers['Content-Length'] = st.size;
      }
      res.writeHead(status, headers);
      if (req.method === 'HEAD') { res.end(); return log(status); }
      const stream = createReadStream(file, range ? { start: range.start, end: range.end } : {});
      stream.on('error', () => res.destroy());
      stream.pipe(res);
      log(status);
    } catch (e) {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(e && e.message));
      log(500);
    }
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, ok);
  });
  const addr = server.address();
  const url = `http://${host}:${addr.port}/`;
  const close = () =>
    new Promise((ok) => {
      server.close(() => ok());
      server.closeAllConnections?.(); // keep-alive sockets would hold the port open
    });
  return { server, url, port: addr.port, close };
}

function parseArgs(argv) {
  const out = { port: 0, root: null, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') out.port = Number(argv[++i]);
    else if (a.startsWith('--port=')) out.port = Number(a.slice(7));
    else if (a === '--root') out.root = argv[++i];
    else if (a.startsWith('--root=')) out.root = a.slice(7);
    else if (a === '--quiet') out.quiet = true;
    else if (a === '-h' || a === '--help') {
      console.log('usage: node tools/serve.mjs [--port N] [--root DIR] [--quiet]');
      process.exit(0);
    } else {
      console.error(`serve.mjs: unknown argument ${a}`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) {
    console.error('serve.mjs: --port takes 0..65535');
    process.exit(2);
  }
  return out;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = parseArgs(process.argv.slice(2));
  const root = args.root ?? join(fileURLToPath(new URL('..', import.meta.url)), 'www');
  let url;
  try {
    ({ url } = await serve({ root, port: args.port, quiet: args.quiet }));
  } catch (e) {
    console.error(`serve.mjs: cannot listen on 127.0.0.1:${args.port}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}`);
    process.exit(1);
  }
  console.log(url);
  const stop = () => process.exit(0);
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
