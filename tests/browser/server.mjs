// A small static file server for the browser tests (node:http, no
// dependencies). It serves folders under URL prefixes, counts requests per
// path, and can be told to misbehave on a path: answer an error status, close
// the connection halfway through the body, or send slowly.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.txt': 'text/plain; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.bin': 'application/octet-stream',
  '.ts': 'text/plain; charset=utf-8',
};

/**
 * @param {{ mounts: Record<string, string>, port?: number }} options
 *   mounts: URL prefix ('/', '/lora/') → folder. The longest matching prefix wins.
 */
export async function startServer({ mounts, port = 0 }) {
  const table = Object.entries(mounts)
    .map(([prefix, dir]) => [prefix.endsWith('/') ? prefix : `${prefix}/`, path.resolve(dir)])
    .sort((a, b) => b[0].length - a[0].length);
  const counts = new Map();
  const log = [];
  /** path → { mode: 'status'|'close'|'slow', status, afterBytes, bytesPerSecond, times } */
  const faults = new Map();
  const sockets = new Set();

  function resolve(urlPath) {
    for (const [prefix, dir] of table) {
      if (urlPath === prefix.slice(0, -1) || urlPath.startsWith(prefix)) {
        const rest = decodeURIComponent(urlPath.slice(prefix.length));
        const file = path.resolve(dir, rest || 'index.html');
        if (file !== dir && !file.startsWith(dir + path.sep)) return null;
        return file;
      }
    }
    return null;
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const p = url.pathname;
    counts.set(p, (counts.get(p) ?? 0) + 1);
    log.push({ path: p, method: req.method, time: Date.now() });
    const file = resolve(p);
    let stat = null;
    try {
      stat = file ? fs.statSync(file) : null;
    } catch {
      stat = null;
    }
    if (!stat || !stat.isFile()) {
      res.writeHead(404, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      res.end(`not found: ${p}\n`);
      return;
    }
    let fault = faults.get(p);
    if (fault) {
      if (fault.times !== undefined) {
        fault.times -= 1;
        if (fault.times <= 0) faults.delete(p);
      }
    }
    const headers = {
      'Content-Type': TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
      'Content-Length': String(stat.size),
      'Cache-Control': 'no-store',
    };
    if (fault?.mode === 'status') {
      res.writeHead(fault.status ?? 503, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      res.end('fault injected\n');
      return;
    }
    res.writeHead(200, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    if (fault?.mode === 'close') {
      // Send part of the body, then drop the connection (Content-Length promises more).
      const cut = Math.max(0, Math.min(stat.size - 1, fault.afterBytes ?? Math.floor(stat.size / 2)));
      const stream = fs.createReadStream(file, { start: 0, end: Math.max(0, cut - 1) });
      stream.on('data', (chunk) => res.write(chunk));
      stream.on('end', () => setTimeout(() => req.socket.destroy(), 20));
      return;
    }
    if (fault?.mode === 'slow') {
      const rate = fault.bytesPerSecond ?? 256 * 1024;
      const chunk = Math.max(1024, Math.floor(rate / 20));
      const fd = fs.openSync(file, 'r');
      let offset = 0;
      let open = true;
      const done = () => {
        if (open) {
          open = false;
          fs.closeSync(fd);
        }
      };
      res.on('close', done);
      const tick = () => {
        if (!open || res.destroyed) return done();
        const n = Math.min(chunk, stat.size - offset);
        if (n <= 0) {
          done();
          res.end();
          return;
        }
        const buf = Buffer.alloc(n);
        fs.readSync(fd, buf, 0, n, offset);
        offset += n;
        res.write(buf);
        setTimeout(tick, 50);
      };
      tick();
      return;
    }
    fs.createReadStream(file).pipe(res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  const actualPort = server.address().port;
  const origin = `http://localhost:${actualPort}`;

  return {
    origin,
    url: (p) => new URL(p, origin).href,
    /** Requests seen for an exact path. */
    count: (p) => counts.get(p) ?? 0,
    /** Sum of requests over paths that match a predicate or a RegExp. */
    countWhere: (test) => [...counts].filter(([p]) => (test instanceof RegExp ? test.test(p) : test(p))).reduce((s, [, n]) => s + n, 0),
    /** Every path requested since the last reset, in order. */
    requests: () => log.map((e) => e.path),
    resetCounts() {
      counts.clear();
      log.length = 0;
    },
    /** Answer `status` on `p` (for `times` requests, or until cleared). */
    failPath(p, { status = 503, times } = {}) {
      faults.set(p, { mode: 'status', status, times });
    },
    /** Send `afterBytes` (default half) of `p`, then close the connection. */
    closePath(p, { afterBytes, times } = {}) {
      faults.set(p, { mode: 'close', afterBytes, times });
    },
    /** Send `p` at about `bytesPerSecond`. */
    slowPath(p, { bytesPerSecond = 256 * 1024, times } = {}) {
      faults.set(p, { mode: 'slow', bytesPerSecond, times });
    },
    clearFaults(p) {
      if (p === undefined) faults.clear();
      else faults.delete(p);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(() => r()));
    },
  };
}
