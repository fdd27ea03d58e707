// Service worker of the demo page: the app shell offline, and model files from
// the module's model cache when the network is gone.
//
// Shell. Precached on install into a versioned cache
// `llama-adapter-web-shell-<SW_VERSION>-<content hash>` and served cache-first,
// so a visit never mixes old and new files. Two things make a new version:
//  * this file changes (bump SW_VERSION when the page's code changes): the
//    browser installs the new worker next to the old one, the page shows its
//    "update ready" banner, and the new worker takes over on the next visit
//    (or at once when the banner's button is pressed); `activate` deletes the
//    old shell caches;
//  * a shell file changes on the server without this file changing (www/pkg
//    rebuilt, say): on each visit the page asks the worker to check; the worker
//    fetches the shell again (conditional requests, cheap when nothing
//    changed), and when any file's bytes differ it builds a complete new
//    cache beside the current one and tells the page, which shows the same
//    banner. The new cache becomes current when the banner's button is pressed,
//    or on the next visit that starts with no page of this app open.
//
// Models. The module (src/cache.js) stores verified model files in the Cache
// API under `llama-adapter-web-models-v1`: shards under their absolute URL plus
// `?sha256=<hash>`, manifests under their plain URL. It reads that cache
// itself before fetching, so this worker never writes it and only helps when
// the network is gone: requests under models/ go to the network first and fall
// back to that cache (and to the shell cache for the example pictures).

const SW_VERSION = '1';
const SHELL_PREFIX = 'llama-adapter-web-shell-';
const META_CACHE = 'llama-adapter-web-meta';
const MODEL_CACHE = 'llama-adapter-web-models-v1';
const META_KEY = 'state.json';

// Relative to this file (the app's scope). Files that fail to download are
// left out (reported in the console); the page still works online without them.
const SHELL_FILES = [
  './',
  'index.html',
  'app.js',
  'app.css',
  'manifest.webmanifest',
  'icons/icon-192.png',
  'icons/icon-512.png',
  'src/index.js',
  'src/worker.js',
  'src/cache.js',
  'src/errors.js',
  'pkg/llama_adapter_web.js',
  'pkg/llama_adapter_web_bg.wasm',
  'models/default/examples/shapes-1.png',
  'models/default/examples/shapes-2.png',
  'models/default/examples/shapes-3.png',
];

const SCOPE = new URL('./', self.location.href).href;
const abs = (p) => new URL(p, SCOPE).href;
const SHELL_URLS = SHELL_FILES.map(abs);
const HASH_HEADER = 'x-shell-sha256';

// ------------------------------------------------------------------- helpers

async function sha256Hex(buf) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function readMeta() {
  try {
    const cache = await caches.open(META_CACHE);
    const res = await cache.match(abs(META_KEY));
    return res ? await res.json() : {};
  } catch {
    return {};
  }
}

async function writeMeta(meta) {
  knownCurrent = null;
  const cache = await caches.open(META_CACHE);
  await cache.put(abs(META_KEY), new Response(JSON.stringify(meta), { headers: { 'Content-Type': 'application/json' } }));
}

/** Fetches every shell file (revalidating with the server), with its sha256. */
async function fetchShell(urls) {
  const out = [];
  await Promise.all(
    urls.map(async (url) => {
      try {
        const res = await fetch(url, { cache: 'no-cache', credentials: 'same-origin' });
        if (!res.ok || res.type !== 'basic') {
          console.warn(`[sw] ${url}: ${res.status}, left out of the offline copy`);
          return;
        }
        const body = await res.arrayBuffer();
        out.push({ url, body, hash: await sha256Hex(body), headers: res.headers });
      } catch (e) {
        out.push({ url, error: e });
      }
    }),
  );
  if (out.some((f) => f.error)) {
    const e = out.find((f) => f.error).error;
    throw e instanceof Error ? e : new Error(String(e));
  }
  return out.sort((a, b) => a.url.localeCompare(b.url));
}

/** Writes a complete shell cache; its name carries a hash over all files. */
async function storeShell(files) {
  const all = await sha256Hex(new TextEncoder().encode(files.map((f) => `${f.url} ${f.hash}`).join('\n')));
  const name = `${SHELL_PREFIX}${SW_VERSION}-${all.slice(0, 16)}`;
  if (await caches.has(name)) return name;
  const cache = await caches.open(`${name}-partial`);
  for (const f of files) {
    const headers = new Headers();
    for (const k of ['content-type', 'last-modified', 'etag']) {
      const v = f.headers.get(k);
      if (v) headers.set(k, v);
    }
    headers.set('content-length', String(f.body.byteLength));
    headers.set(HASH_HEADER, f.hash);
    await cache.put(f.url, new Response(f.body, { status: 200, headers }));
  }
  // Copy to the final name only once complete: a half-built cache never becomes current.
  const final = await caches.open(name);
  for (const req of await cache.keys()) await final.put(req, await cache.match(req));
  await caches.delete(`${name}-partial`);
  return name;
}

// The current shell cache's name, remembered while this worker runs (it reads
// the meta cache again after a restart, or after any change of the meta).
let knownCurrent = null;

async function currentShell() {
  if (knownCurrent) return knownCurrent;
  const meta = await readMeta();
  if (meta.current && (await caches.has(meta.current))) return (knownCurrent = meta.current);
  // No pointer (first start, or storage cleared): the newest cache of this version.
  const names = (await caches.keys()).filter((n) => n.startsWith(`${SHELL_PREFIX}${SW_VERSION}-`) && !n.endsWith('-partial'));
  return names.at(-1) ?? null;
}

async function deleteOtherShells(keep) {
  const keepSet = new Set(keep.filter(Boolean));
  for (const name of await caches.keys()) {
    if (name.startsWith(SHELL_PREFIX) && !keepSet.has(name)) await caches.delete(name);
  }
}

async function notifyClients(message) {
  for (const client of await self.clients.matchAll({ type: 'window', includeUncontrolled: true })) client.postMessage(message);
}

// ----------------------------------------------------------------- lifecycle

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const files = await fetchShell(SHELL_URLS);
      const name = await storeShell(files);
      const meta = await readMeta();
      // Becomes current on activate (this worker's own cache).
      await writeMeta({ ...meta, installing: name });
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      const meta = await readMeta();
      const mine = meta.installing && (await caches.has(meta.installing)) ? meta.installing : await currentShell();
      await writeMeta({ current: mine, pending: null, installing: null, version: SW_VERSION });
      await deleteOtherShells([mine]);
      await self.clients.claim();
    })(),
  );
});

// ----------------------------------------------------------- update checking

let checking = null;
let lastCheck = 0;

/** Re-fetches the shell; if any byte changed, builds a pending cache and tells the pages. */
function checkForUpdate({ force = false } = {}) {
  if (checking) return checking;
  if (!force && Date.now() - lastCheck < 10_000) return Promise.resolve(false);
  checking = (async () => {
    try {
      const current = await currentShell();
      if (!current) return false;
      const cache = await caches.open(current);
      const keys = (await cache.keys()).map((r) => r.url);
      const urls = [...new Set([...SHELL_URLS, ...keys])];
      const files = await fetchShell(urls);
      let changed = false;
      for (const f of files) {
        const old = await cache.match(f.url);
        if (!old || old.headers.get(HASH_HEADER) !== f.hash) {
          changed = true;
          break;
        }
      }
      if (!changed) return false;
      const name = await storeShell(files);
      if (name === current) return false;
      const meta = await readMeta();
      if (meta.pending && meta.pending !== name) await caches.delete(meta.pending);
      await writeMeta({ ...meta, pending: name });
      await notifyClients({ type: 'update-ready', kind: 'content' });
      return true;
    } catch (e) {
      // Offline, or the server is gone: keep what we have.
      return false;
    } finally {
      lastCheck = Date.now();
      checking = null;
    }
  })();
  return checking;
}

async function applyPending() {
  const meta = await readMeta();
  if (!meta.pending || !(await caches.has(meta.pending))) return false;
  const old = meta.current;
  await writeMeta({ ...meta, current: meta.pending, pending: null });
  if (old && old !== meta.pending) await caches.delete(old);
  return true;
}

self.addEventListener('message', (event) => {
  const type = event.data?.type;
  const reply = (value) => event.ports?.[0]?.postMessage(value);
  if (type === 'skip-waiting') {
    self.skipWaiting();
  } else if (type === 'check-update') {
    event.waitUntil(
      (async () => {
        const meta = await readMeta();
        if (meta.pending && (await caches.has(meta.pending))) {
          event.source?.postMessage({ type: 'update-ready', kind: 'content' });
          return;
        }
        await checkForUpdate({ force: true });
      })(),
    );
  } else if (type === 'apply-update') {
    event.waitUntil(applyPending().then((ok) => reply({ type: 'applied', ok }), () => reply({ type: 'applied', ok: false })));
  } else if (type === 'version') {
    event.waitUntil(currentShell().then((name) => reply({ type: 'version', version: SW_VERSION, cache: name })));
  }
});

// --------------------------------------------------------------------- fetch

function isModelRequest(url) {
  return url.href.startsWith(abs('models/')) && !/\/examples\//.test(url.pathname);
}

async function fromShell(request, { ignoreSearch = false } = {}) {
  const name = await currentShell();
  if (!name) return null;
  const cache = await caches.open(name);
  return (await cache.match(request, { ignoreVary: true })) ?? (ignoreSearch ? await cache.match(request, { ignoreSearch: true, ignoreVary: true }) : null);
}

async function shellResponse(request) {
  const hit = await fromShell(request);
  if (hit) return hit;
  // Not precached (a file this list does not know): the network, kept for offline use.
  const res = await fetch(request);
  if (res.ok && res.type === 'basic' && !request.headers.has('range')) {
    const name = await currentShell();
    if (name) {
      const copy = res.clone();
      copy
        .arrayBuffer()
        .then(async (body) => {
          const headers = new Headers(copy.headers);
          headers.set(HASH_HEADER, await sha256Hex(body));
          headers.set('content-length', String(body.byteLength));
          await (await caches.open(name)).put(request.url, new Response(body, { status: 200, headers }));
        })
        .catch(() => {});
    }
  }
  return res;
}

async function navigationResponse(event) {
  const request = event.request;
  const url = new URL(request.url);
  const clients = await self.clients.matchAll({ type: 'window' });
  // A visit with no page of this app open takes a pending shell update now.
  if (clients.length === 0) await applyPending();
  const isShellPage = url.href === SCOPE || url.href === abs('index.html') || url.href.startsWith(`${SCOPE}?`) || url.href.startsWith(`${abs('index.html')}?`);
  if (isShellPage) {
    const hit = (await fromShell(SCOPE)) ?? (await fromShell(abs('index.html')));
    if (hit) {
      event.waitUntil(checkForUpdate());
      return hit;
    }
  }
  try {
    return await fetch(request);
  } catch (e) {
    const hit = await fromShell(request, { ignoreSearch: true });
    if (hit) return hit;
    throw e;
  }
}

async function modelResponse(request) {
  const url = new URL(request.url);
  try {
    const res = await fetch(request);
    if (res.status < 500) return res;
    const stored = await fromModelCache(url, request);
    return stored ?? res;
  } catch (e) {
    const stored = await fromModelCache(url, request);
    if (stored) return stored;
    throw e;
  }
}

async function fromModelCache(url, request) {
  if (request.headers.has('range')) return null;
  try {
    const cache = await caches.open(MODEL_CACHE);
    const exact = await cache.match(url.href);
    if (exact) return exact;
    // A shard fetched by its plain URL: the stored copy under any ?sha256= key
    // (offline only: online, the module compares hashes itself).
    if (!url.search) {
      for (const req of await cache.keys()) {
        if (req.url.replace(/\?sha256=[0-9a-f]+$/i, '') === url.href) return await cache.match(req);
      }
    }
  } catch {
    /* no cache */
  }
  return null;
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || !url.href.startsWith(SCOPE)) return;
  if (url.href === self.location.href) return; // the worker script itself
  if (request.mode === 'navigate') {
    event.respondWith(navigationResponse(event));
  } else if (isModelRequest(url)) {
    event.respondWith(modelResponse(request));
  } else {
    event.respondWith(shellResponse(request));
  }
});
