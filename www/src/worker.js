// The engine worker: one per loaded model, started by index.js as a module
// worker. It owns the wasm Engine (and so the GPU device), fetches the model
// (network or Cache API), and runs generation, posting tokens as they come.
//
// Protocol (all messages are plain objects; see index.js for the other side):
//   main → worker  { id, type, ...payload }         a request; id is unique per worker
//                  { type: 'abort', target: id }     stop request `id` (load, setAdapter, generate)
//   worker → main  { id, type: 'progress', event }   load / setAdapter progress
//                  { id, type: 'token', tokenId, text }
//                  { id, type: 'result', value }     the request's answer (last message for id)
//                  { id, type: 'error', error }      error payload (errors.js toPayload); last message for id
//                  { type: 'fatal', error }          the engine is unusable (wasm trap); index.js terminates us
// Request types: checkSupport, load, setAdapter, encodeImage, encodeImageRgba,
// releaseImage, generate, profile, stats, destroyDevice, panic (test hooks), dispose.

// Imported statically (not with import()) so bundlers emit one worker chunk,
// which their default (iife) worker format needs.
import initWasm, * as wasm from '../pkg/llama_adapter_web.js';
import { makeError, toPayload } from './errors.js';
import { canHash, openModelCache, pruneStale, sha256Hex, shardKey, storageEstimate, CACHE_NAME } from './cache.js';

/** Parallel shard requests; shards are still written to the GPU one at a time. */
const PARALLEL_FETCHES = 3;
/** At most one 'download' progress event per this many ms (plus one at the end of each file). */
const DOWNLOAD_EVENT_MS = 50;

let wasmPromise = null;
let engine = null;
let enginePromise = null;
/** Set once the engine must not be used again (wasm trap): every request gets this error. */
let dead = null;
/** Request id → AbortController, for abort messages. */
const controllers = new Map();
/** True from the moment a generate is accepted until it ends (a second one is 'busy'). */
let generating = false;
/** Engine operations run one after another (the wasm engine is single-threaded state). */
let chain = Promise.resolve();

function exclusive(fn) {
  const run = chain.then(fn, fn);
  chain = run.then(
    () => {},
    () => {},
  );
  return run;
}

function post(message, transfer) {
  self.postMessage(message, transfer ?? []);
}

function die(error) {
  if (dead) return;
  dead = toPayload(error);
  dead.fatal = true;
  post({ type: 'fatal', error: dead });
}

// A Rust panic inside a future (a wasm trap thrown from wasm-bindgen-futures'
// task queue) does not reject the pending promise: it surfaces here.
self.addEventListener('error', (event) => {
  die(event.error ?? new Error(event.message || 'uncaught error in the engine worker'));
});
self.addEventListener('unhandledrejection', (event) => {
  const reason = event.reason;
  if (typeof WebAssembly !== 'undefined' && reason instanceof WebAssembly.RuntimeError) die(reason);
});

self.addEventListener('message', (event) => {
  const msg = event.data;
  if (!msg || typeof msg !== 'object') return;
  if (msg.type === 'abort') {
    controllers.get(msg.target)?.abort();
    return;
  }
  handle(msg);
});

async function handle(msg) {
  const { id, type } = msg;
  if (dead) {
    post({ id, type: 'error', error: dead });
    return;
  }
  const controller = new AbortController();
  controllers.set(id, controller);
  try {
    const value = await dispatch(msg, controller.signal);
    post({ id, type: 'result', value });
  } catch (e) {
    const error = toPayload(e);
    if (error.details?.trap) die(e);
    post({ id, type: 'error', error });
  } finally {
    controllers.delete(id);
  }
}

function abortedError(what) {
  return makeError('aborted', `${what} was stopped`);
}

async function dispatch(msg, signal) {
  switch (msg.type) {
    case 'checkSupport': {
      const w = await loadWasm(msg.wasmUrl);
      return plain(await w.checkSupport());
    }
    case 'load':
      return exclusive(() => load(msg, signal));
    case 'check':
      return exclusive(() => check(msg, signal));
    case 'setAdapter':
      return exclusive(() => load({ ...msg, base: null }, signal));
    case 'encodeImage':
      return exclusive(async () => Number(await requireEngine().encodeImage(new Uint8Array(msg.bytes))));
    case 'encodeImageRgba':
      return exclusive(async () => Number(await requireEngine().encodeImageRgba(new Uint8Array(msg.rgba), msg.width, msg.height)));
    case 'releaseImage':
      return exclusive(() => {
        requireEngine().releaseImage(msg.handle);
        return true;
      });
    case 'generate':
      return generate(msg, signal);
    case 'profile':
      if (generating) throw makeError('busy', 'A generation is running on this model; profile after it');
      return exclusive(async () => plain(await requireEngine().profileForward(msg.request)));
    case 'stats': {
      const e = requireEngine();
      return { wasmMemoryBytes: e.wasmMemoryBytes(), modelInfo: plain(e.modelInfo()) };
    }
    case 'destroyDevice':
      // Not queued: the test hook is meant to hit a running generation.
      requireEngine().destroyDevice();
      return true;
    case 'panic':
      // Test hook: a Rust panic (a wasm trap), as a bug would cause.
      requireEngine().panicForTesting();
      return true;
    case 'dispose':
      for (const c of controllers.values()) c.abort();
      return exclusive(() => {
        if (engine) {
          try {
            engine.free();
          } catch {
            /* already gone */
          }
          engine = null;
        }
        return true;
      });
    default:
      throw makeError('bad-input', `unknown request ${JSON.stringify(msg.type)}`);
  }
}

// ---------------------------------------------------------------- the engine

async function loadWasm(wasmUrl) {
  if (!wasmPromise) {
    wasmPromise = (async () => {
      const moduleOrPath = wasmUrl ? new URL(wasmUrl) : new URL('../pkg/llama_adapter_web_bg.wasm', import.meta.url);
      await initWasm({ module_or_path: moduleOrPath });
      return wasm;
    })();
  }
  try {
    return await wasmPromise;
  } catch (e) {
    wasmPromise = null;
    // A failed fetch is a TypeError.
    const code = e instanceof TypeError ? 'network' : 'internal';
    throw makeError(code, `Could not start the engine (pkg/llama_adapter_web_bg.wasm): ${e?.message ?? e}`, { cause: e });
  }
}

async function getEngine(wasmUrl) {
  if (engine) return engine;
  if (!enginePromise) {
    enginePromise = (async () => {
      const w = await loadWasm(wasmUrl);
      engine = await w.Engine.create();
      return engine;
    })();
  }
  try {
    return await enginePromise;
  } catch (e) {
    enginePromise = null;
    throw e;
  }
}

function requireEngine() {
  if (!engine) throw makeError('bad-input', 'no model is loaded in this worker');
  return engine;
}

/** serde/wasm-bindgen values as plain JSON-like data (Maps → objects, BigInts → numbers). */
function plain(v) {
  if (v == null) return v ?? null;
  if (typeof v === 'bigint') return Number(v);
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x)]));
  if (Array.isArray(v)) return v.map(plain);
  if (ArrayBuffer.isView(v)) return Array.from(v);
  if (typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

// ------------------------------------------------------------------- loading

/** Monotonic byte progress over one load. Each file counts once, up to its size. */
class Progress {
  constructor(requestId, totalBytes) {
    this.id = requestId;
    this.total = totalBytes;
    this.loaded = 0;
    this.credited = new Map();
    this.lastDownloadEvent = 0;
  }
  /** Counts `item` as obtained up to `upTo` bytes (never counts a byte twice, e.g. on a refetch). */
  credit(item, upTo) {
    const prev = this.credited.get(item) ?? 0;
    const now = Math.min(upTo, item.bytes);
    if (now > prev) {
      this.credited.set(item, now);
      this.loaded = Math.min(this.total, this.loaded + (now - prev));
    }
  }
  emit(phase, item, fromCache) {
    post({
      id: this.id,
      type: 'progress',
      event: {
        phase,
        loadedBytes: this.loaded,
        totalBytes: this.total,
        shard: item ? { package: item.package, kind: item.kind, index: item.index, file: item.file, bytes: item.bytes, url: item.url } : null,
        fromCache: !!fromCache,
      },
    });
  }
  download(item, finished) {
    const now = performance.now();
    if (finished || now - this.lastDownloadEvent >= DOWNLOAD_EVENT_MS) {
      this.lastDownloadEvent = now;
      this.emit('download', item, false);
    }
  }
}

const MAX_MANIFEST_BYTES = 64 << 20;

function tooBigManifest(url, bytes) {
  return makeError('bad-format', `${url} is ${bytes} bytes: that is not a model manifest (at most ${MAX_MANIFEST_BYTES} bytes). Check the URL.`, { details: { url, bytes } });
}

async function fetchManifest(url, ctx) {
  let response = null;
  let failure = null;
  try {
    response = await fetch(url, { signal: ctx.signal, cache: 'no-cache', credentials: 'same-origin' });
    if (!response.ok) {
      failure = makeError('network', `The server answered ${response.status} ${response.statusText} for ${url}`, { details: { url, status: response.status } });
    }
  } catch (e) {
    if (ctx.signal.aborted) throw abortedError('The load');
    failure = makeError('network', `Could not download ${url}: ${e?.message ?? e}`, { cause: e, details: { url } });
  }
  if (!failure) {
    // A manifest is a table of a few thousand tensors (LLaMA-7B's: ~0.5 MB):
    // refuse what cannot be one before it is read into memory.
    const declared = Number(response.headers.get('Content-Length') ?? 0);
    if (declared > MAX_MANIFEST_BYTES) throw tooBigManifest(url, declared);
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (bytes.length > MAX_MANIFEST_BYTES) throw tooBigManifest(url, bytes.length);
    if (ctx.cache && !ctx.cacheFull) {
      try {
        await ctx.cache.put(url, new Response(bytes, { headers: { 'Content-Type': 'application/json' } }));
      } catch (e) {
        ctx.noteCacheError(e);
      }
    }
    return { bytes, fromCache: false };
  }
  // Offline start: the copy stored by an earlier load. A 404 is not "offline".
  const status = failure.details.status;
  if (ctx.cache && (status === undefined || status >= 500)) {
    try {
      const stored = await ctx.cache.match(url);
      if (stored) return { bytes: new Uint8Array(await stored.arrayBuffer()), fromCache: true };
    } catch {
      /* fall through to the network error */
    }
  }
  throw failure;
}

function planItems(plan, baseUrl, adapterUrl) {
  const items = [];
  const add = (pkg, kind, index, f, manifestUrl) => {
    const url = new URL(f.file, manifestUrl).href;
    items.push({ package: pkg, kind, index, file: f.file, bytes: Number(f.bytes), sha256: String(f.sha256).toLowerCase(), url, key: shardKey(url, String(f.sha256).toLowerCase()), fromCache: false });
  };
  if (plan.base) {
    plan.base.shards.forEach((s, i) => add('base', 'shard', i, s, baseUrl));
    if (plan.base.tokenizer) add('base', 'tokenizer', -1, plan.base.tokenizer, baseUrl);
  }
  plan.adapter.shards.forEach((s, i) => add('adapter', 'shard', i, s, adapterUrl));
  return items;
}

async function download(item, ctx) {
  let response;
  try {
    // Our own cache holds verified copies: keep the HTTP cache from storing a second one.
    response = await fetch(item.url, { signal: ctx.signal, cache: ctx.cache ? 'no-store' : 'default', credentials: 'same-origin' });
  } catch (e) {
    if (ctx.signal.aborted) throw abortedError('The load');
    throw makeError('network', `Could not download ${item.url}: ${e?.message ?? e}`, { cause: e, details: { url: item.url } });
  }
  if (!response.ok) {
    throw makeError('network', `The server answered ${response.status} ${response.statusText} for ${item.url}`, { details: { url: item.url, status: response.status } });
  }
  const out = new Uint8Array(item.bytes);
  let got = 0;
  const take = (chunk) => {
    if (got + chunk.byteLength > item.bytes) {
      throw makeError('integrity', `${item.url} is larger than the ${item.bytes} bytes its manifest gives`, { details: { url: item.url, expectedBytes: item.bytes } });
    }
    out.set(chunk, got);
    got += chunk.byteLength;
    ctx.progress.credit(item, got);
    ctx.progress.download(item, got === item.bytes);
  };
  try {
    if (response.body && typeof response.body.getReader === 'function') {
      const reader = response.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          take(value);
        }
      } finally {
        reader.releaseLock?.();
      }
    } else {
      take(new Uint8Array(await response.arrayBuffer()));
    }
  } catch (e) {
    if (e?.name === 'LlamaAdapterError') throw e;
    if (ctx.signal.aborted) throw abortedError('The load');
    throw makeError('network', `The download of ${item.url} broke off after ${got} of ${item.bytes} bytes: ${e?.message ?? e}`, { cause: e, details: { url: item.url, receivedBytes: got } });
  }
  if (got !== item.bytes) {
    const length = response.headers.get('content-length');
    const complete = !response.headers.get('content-encoding') && length !== null && Number(length) === got;
    throw makeError(
      complete ? 'integrity' : 'network',
      complete
        ? `${item.url} is ${got} bytes on the server but its manifest says ${item.bytes}`
        : `The download of ${item.url} stopped after ${got} of ${item.bytes} bytes`,
      { details: { url: item.url, receivedBytes: got, expectedBytes: item.bytes } },
    );
  }
  return out;
}

async function evict(item, ctx) {
  ctx.evicted.push(item.url);
  try {
    await ctx.cache.delete(item.key);
  } catch {
    /* it will be overwritten by put */
  }
}

/**
 * One file's bytes: from the cache when a copy of the right size is there,
 * else from the network, verified (sha256) and then stored. A cached copy is
 * not hashed here: writeShard / setTokenizer verify every file anyway, and an
 * 'integrity' failure there evicts the entry and fetches the file again (see
 * load), so a warm load hashes each byte once, not twice.
 */
async function obtain(item, ctx, { skipCache = false } = {}) {
  if (ctx.cache && !skipCache) {
    let stored = null;
    try {
      stored = await ctx.cache.match(item.key);
    } catch {
      stored = null;
    }
    if (stored) {
      let bytes = null;
      try {
        bytes = new Uint8Array(await stored.arrayBuffer());
      } catch {
        bytes = null;
      }
      if (bytes && bytes.byteLength === item.bytes) {
        item.fromCache = true;
        ctx.progress.credit(item, item.bytes);
        ctx.progress.emit('cache', item, true);
        return bytes;
      }
      // A damaged entry (disk error, an old bug, a tampered profile): drop it and fetch again.
      await evict(item, ctx);
    }
  }
  if (ctx.signal.aborted) throw abortedError('The load');
  const bytes = await download(item, ctx);
  ctx.networkBytes += bytes.byteLength;
  if (canHash()) {
    ctx.progress.emit('verify', item, false);
    const hash = await sha256Hex(bytes);
    if (hash !== item.sha256) {
      throw makeError('integrity', `${item.url} has sha256 ${hash}, but its manifest says ${item.sha256}`, { details: { url: item.url, expected: item.sha256, actual: hash } });
    }
  }
  if (ctx.cache && !ctx.cacheFull) {
    try {
      await ctx.cache.put(item.key, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(bytes.byteLength) } }));
    } catch (e) {
      ctx.noteCacheError(e);
    }
  }
  return bytes;
}

/**
 * What `load` checks before any shard: both manifests (from the network, or
 * the cache when offline), their config, the adapter's base, and the fit on
 * this device. Nothing is downloaded or allocated beyond the manifests.
 */
async function check(msg, signal) {
  const eng = await getEngine(msg.wasmUrl);
  const cache = canHash() ? (await openModelCache()).cache : null;
  const ctx = { signal, cache, cacheFull: true, noteCacheError() {} };
  const [baseManifest, adapterManifest] = await Promise.all([fetchManifest(msg.base, ctx), fetchManifest(msg.adapter, ctx)]);
  if (signal.aborted) throw abortedError('The check');
  try {
    const plan = plain(eng.beginLoad(baseManifest.bytes, adapterManifest.bytes, msg.base, msg.adapter));
    return {
      fit: plan.fit,
      totalBytes: Number(plan.totalBytes),
      baseManifestSha256: plan.base.manifestSha256,
      adapterManifestSha256: plan.adapter.manifestSha256,
      files: plan.base.shards.length + (plan.base.tokenizer ? 1 : 0) + plan.adapter.shards.length,
    };
  } finally {
    eng.cancelLoad();
  }
}

async function load(msg, outerSignal) {
  const started = performance.now();
  const eng = await getEngine(msg.wasmUrl);
  if (outerSignal.aborted) throw abortedError('The load');
  // One controller for every fetch of this load: an abort, or the first failure, stops them all.
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  outerSignal.addEventListener('abort', onAbort);
  const ctx = {
    signal: controller.signal,
    cache: null,
    cacheFull: false,
    cacheError: null,
    evicted: [],
    networkBytes: 0,
    progress: null,
    noteCacheError(e) {
      const quota = e?.name === 'QuotaExceededError';
      ctx.cacheError ??= quota
        ? `The browser's storage quota is full, so the model is not cached (it will be downloaded again next time): ${e.message}`
        : `Could not store the model in the cache: ${e?.name ?? ''} ${e?.message ?? e}`.trim();
      ctx.cacheErrorCode ??= quota ? 'quota' : 'cache';
      if (quota) ctx.cacheFull = true;
    },
  };
  try {
    if (msg.cache !== false) {
      if (!canHash()) ctx.cacheError = 'crypto.subtle is not available here (it needs a secure context), so the model is not cached';
      else {
        const opened = await openModelCache();
        ctx.cache = opened.cache;
        ctx.cacheError = opened.error;
      }
    }
    const [baseManifest, adapterManifest] = await Promise.all([msg.base ? fetchManifest(msg.base, ctx) : null, fetchManifest(msg.adapter, ctx)]);
    if (ctx.signal.aborted) throw abortedError('The load');

    const plan = plain(eng.beginLoad(baseManifest ? baseManifest.bytes : null, adapterManifest.bytes, msg.base ?? undefined, msg.adapter));
    let peakWasm = eng.wasmMemoryBytes();
    const items = planItems(plan, msg.base, msg.adapter);
    const progress = new Progress(msg.id, Number(plan.totalBytes));
    ctx.progress = progress;
    try {
      await eng.allocate();
      if (ctx.signal.aborted) throw abortedError('The load');

      // Writes to the GPU one at a time, in arrival order; each file's bytes are dropped once written.
      let writing = Promise.resolve();
      const write = (item, bytes) => {
        const run = writing.then(() => {
          if (ctx.signal.aborted) throw abortedError('The load');
          progress.emit('upload', item, item.fromCache);
          if (item.kind === 'tokenizer') eng.setTokenizer(bytes);
          else eng.writeShard(item.package, item.index, bytes);
          peakWasm = Math.max(peakWasm, eng.wasmMemoryBytes());
        });
        writing = run.catch(() => {});
        return run;
      };
      let next = 0;
      let failure = null;
      const lane = async () => {
        while (!failure && next < items.length) {
          const item = items[next++];
          try {
            const bytes = await obtain(item, ctx);
            try {
              await write(item, bytes);
            } catch (e) {
              // The engine's check found the cached copy damaged: evict it, fetch it again.
              if (!(item.fromCache && e?.code === 'integrity')) throw e;
              item.fromCache = false;
              await evict(item, ctx);
              await write(item, await obtain(item, ctx, { skipCache: true }));
            }
          } catch (e) {
            failure ??= ctx.signal.aborted && outerSignal.aborted ? abortedError('The load') : e;
            controller.abort();
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(PARALLEL_FETCHES, items.length) }, lane));
      if (failure) throw failure;
      if (outerSignal.aborted) throw abortedError('The load');

      progress.emit('compile', null, false);
      await eng.finishLoad();
      peakWasm = Math.max(peakWasm, eng.wasmMemoryBytes());
    } catch (e) {
      try {
        eng.cancelLoad();
      } catch {
        /* nothing pending */
      }
      throw e;
    }
    progress.emit('ready', null, items.length > 0 && items.every((i) => i.fromCache));

    const pruned = ctx.cache ? await pruneStale(ctx.cache, items.map((i) => i.key)) : 0;
    const cachedBytes = items.filter((i) => i.fromCache).reduce((s, i) => s + i.bytes, 0);
    return {
      modelInfo: plain(eng.modelInfo()),
      gpu: plain(eng.adapterInfo()),
      fit: plan.fit,
      baseManifestSha256: plan.base?.manifestSha256 ?? null,
      adapterManifestSha256: plan.adapter.manifestSha256,
      manifestFromCache: !!(baseManifest?.fromCache || adapterManifest.fromCache),
      totalBytes: Number(plan.totalBytes),
      networkBytes: ctx.networkBytes,
      cachedBytes,
      fromCache: items.length > 0 && items.every((i) => i.fromCache),
      files: items.map((i) => ({ package: i.package, kind: i.kind, index: i.index, file: i.file, url: i.url, bytes: i.bytes, sha256: i.sha256, fromCache: i.fromCache })),
      largestShardBytes: items.reduce((m, i) => Math.max(m, i.bytes), 0),
      cache: { enabled: !!ctx.cache, name: CACHE_NAME, error: ctx.cacheError, errorCode: ctx.cacheErrorCode ?? null, evicted: ctx.evicted, pruned },
      storage: await storageEstimate(),
      wasmMemoryBytes: peakWasm,
      loadMs: performance.now() - started,
    };
  } finally {
    outerSignal.removeEventListener('abort', onAbort);
  }
}

// ---------------------------------------------------------------- generation

const REQUEST_FIELDS = ['prompt', 'input', 'image', 'maxNewTokens', 'temperature', 'topP', 'seed'];

async function generate(msg, signal) {
  if (generating) throw makeError('busy', 'A generation is already running on this model');
  generating = true;
  try {
    return await exclusive(async () => {
      const eng = requireEngine();
      if (signal.aborted) throw abortedError('The generation');
      const request = {};
      for (const k of REQUEST_FIELDS) if (msg.request?.[k] !== undefined && msg.request[k] !== null) request[k] = msg.request[k];
      const result = plain(
        await eng.generate(request, (tokenId, text) => {
          post({ id: msg.id, type: 'token', tokenId: Number(tokenId), text: String(text) });
          return !signal.aborted;
        }),
      );
      if (result.stopped && signal.aborted) {
        const err = abortedError('The generation');
        err.details.partial = result;
        throw err;
      }
      return result;
    });
  } finally {
    generating = false;
  }
}
