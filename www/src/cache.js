// The model cache: the Cache API (CacheStorage), not IndexedDB.
//
// Why the Cache API: it exists in windows, dedicated workers and service
// workers alike, stores Response bodies on disk without structured-cloning
// them through the JS heap, and it is exactly what a service worker (a PWA
// that works offline) reads: a service worker can answer fetches for these
// URLs from the same cache, or pre-fill it.
//
// Keys: a shard is stored under its absolute URL with `?sha256=<hash>`
// appended (`&sha256=` when the URL already has a query). A file that changes
// on the server changes its hash in the manifest, so it can never match an old
// entry. Every shard is verified (crypto.subtle.digest) BEFORE it is stored,
// and again when read back (a corrupt entry is evicted and fetched again).
// Manifests are stored under their plain URL: they are fetched from the
// network first, and the stored copy is used only when the network fails
// (offline start).

export const CACHE_NAME = 'llama-adapter-web-models-v1';

/** The CacheStorage of this global, or null (insecure context, opaque origin, disabled storage). */
export function cacheStorage() {
  try {
    return typeof caches !== 'undefined' && caches && typeof caches.open === 'function' ? caches : null;
  } catch {
    return null; // some browsers throw SecurityError on access
  }
}

/** Opens the model cache; resolves to { cache, error } (cache null when unavailable, with why). */
export async function openModelCache() {
  const storage = cacheStorage();
  if (!storage) return { cache: null, error: 'the Cache API is not available here (it needs a secure context: https:// or localhost)' };
  try {
    return { cache: await storage.open(CACHE_NAME), error: null };
  } catch (e) {
    return { cache: null, error: `the Cache API refused to open the model cache: ${e?.name ?? ''} ${e?.message ?? e}`.trim() };
  }
}

export function shardKey(absoluteUrl, sha256) {
  const u = String(absoluteUrl);
  return `${u}${u.includes('?') ? '&' : '?'}sha256=${sha256}`;
}

/** The key without its sha256 parameter, to find older versions of the same file. */
export function keyFile(key) {
  return String(key).replace(/[?&]sha256=[0-9a-f]+$/i, '');
}

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  const b = new Uint8Array(digest);
  let s = '';
  for (let i = 0; i < b.length; i++) s += b[i].toString(16).padStart(2, '0');
  return s;
}

export function canHash() {
  return typeof crypto !== 'undefined' && !!crypto.subtle && typeof crypto.subtle.digest === 'function';
}

/**
 * Deletes stored versions of `files` (plain absolute URLs) whose sha256 is not
 * the current one: what a model update leaves behind. Never throws.
 */
export async function pruneStale(cache, currentKeys) {
  if (!cache) return 0;
  const keep = new Set(currentKeys);
  const files = new Set([...keep].map(keyFile));
  let removed = 0;
  try {
    for (const request of await cache.keys()) {
      const url = request.url;
      if (keep.has(url) || !/[?&]sha256=[0-9a-f]+$/i.test(url)) continue;
      if (files.has(keyFile(url)) && (await cache.delete(request))) removed++;
    }
  } catch {
    /* pruning is housekeeping only */
  }
  return removed;
}

/** Deletes the whole model cache (every model this origin stored). */
export async function clearModelCache() {
  const storage = cacheStorage();
  if (!storage) return false;
  return storage.delete(CACHE_NAME);
}

/** navigator.storage.estimate(), or null where there is none. */
export async function storageEstimate() {
  try {
    if (typeof navigator === 'undefined' || !navigator.storage?.estimate) return null;
    const e = await navigator.storage.estimate();
    return { usage: e.usage ?? null, quota: e.quota ?? null };
  } catch {
    return null;
  }
}
