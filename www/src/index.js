// llama-adapter-web: a LLaMA-Adapter V2 vision-language model on the user's
// GPU through WebGPU. This is the main-thread side: it never touches the GPU
// or the model bytes itself; each loaded model lives in its own module worker
// (worker.js), and this file only posts requests and turns the answers into
// promises, progress callbacks and async iterators. See index.d.ts for the
// documented API.

import { ERROR_CODES, LlamaAdapterError, fromPayload, makeError, withAdvice } from './errors.js';
import { CACHE_NAME, clearModelCache } from './cache.js';

export { ERROR_CODES, LlamaAdapterError, CACHE_NAME };

const CHECK_SUPPORT_TIMEOUT_MS = 30_000;
const DISPOSE_GRACE_MS = 1_000;

function baseHref() {
  return globalThis.document?.baseURI ?? globalThis.location?.href;
}

function absoluteUrl(url, what) {
  if (url == null || url === '') throw makeError('bad-input', `${what} is missing: give the URL of its manifest.json`);
  try {
    return new URL(String(url), baseHref()).href;
  } catch {
    throw makeError('bad-input', `${what} ${JSON.stringify(String(url))} is not a URL`);
  }
}

function abortError(what) {
  return makeError('aborted', `${what} was stopped`);
}

function noWebgpuReason() {
  if (globalThis.isSecureContext === false) {
    return withAdvice(
      'no-webgpu',
      'WebGPU is only offered to secure pages, and this page is not one (it is served over plain http from a host other than localhost): serve it over https://',
    );
  }
  return withAdvice('no-webgpu', 'This browser does not offer WebGPU (navigator.gpu is missing), which the model needs to run on your GPU');
}

function hasWebgpu() {
  return typeof navigator !== 'undefined' && !!navigator.gpu;
}

/** Calls a user callback without letting its exception break the operation (it is reported, not swallowed). */
function safeCall(fn, arg) {
  if (typeof fn !== 'function') return;
  try {
    fn(arg);
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}

// ------------------------------------------------------------ the worker link

/** One engine worker: requests with ids, progress and token streams, death. */
class EngineWorker {
  constructor() {
    // Written out literally so bundlers (Vite, webpack) see and bundle the worker.
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'llama-adapter-web' });
    this.nextId = 1;
    this.pending = new Map();
    this.dead = null;
    this.worker.addEventListener('message', (e) => this.onMessage(e.data));
    this.worker.addEventListener('error', (e) => {
      e.preventDefault?.();
      this.kill(
        makeError(
          'internal',
          `The engine worker stopped: ${e.message || 'it could not be started (src/worker.js, src/*.js and pkg/ must be served together, .js as JavaScript and .wasm as application/wasm)'}`,
          { details: { fatal: true } },
        ),
      );
    });
    this.worker.addEventListener('messageerror', () => this.kill(makeError('internal', 'A message from the engine worker could not be read', { details: { fatal: true } })));
  }

  onMessage(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'fatal') {
      this.kill(fromPayload(msg.error));
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    switch (msg.type) {
      case 'progress':
        p.onProgress?.(msg.event);
        break;
      case 'token':
        p.onToken?.(msg);
        break;
      case 'result':
        this.settle(msg.id);
        p.resolve(msg.value);
        break;
      case 'error': {
        const err = fromPayload(msg.error);
        this.settle(msg.id);
        if (msg.error.fatal) this.kill(err);
        p.reject(err);
        break;
      }
    }
  }

  settle(id) {
    const p = this.pending.get(id);
    if (p?.cleanup) p.cleanup();
    this.pending.delete(id);
  }

  /**
   * Sends a request. `signal` posts an abort for it; with `rejectOnAbort` the
   * promise rejects at once (else it waits for the worker to stop, so the
   * engine is idle when it settles).
   */
  call(type, payload = {}, { transfer, onProgress, onToken, signal, rejectOnAbort = false } = {}) {
    if (this.dead) return Promise.reject(this.dead);
    if (signal?.aborted) return Promise.reject(abortError(type === 'generate' ? 'The generation' : 'The load'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, onProgress, onToken, cleanup: null };
      if (signal) {
        const onAbort = () => {
          this.abort(id);
          if (rejectOnAbort) {
            this.settle(id);
            reject(abortError('The load'));
          }
        };
        signal.addEventListener('abort', onAbort, { once: true });
        entry.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      this.pending.set(id, entry);
      this.post({ ...payload, id, type }, transfer);
    });
  }

  /** Like call, but also returns the id (to abort it later). */
  start(type, payload, options) {
    const id = this.nextId;
    return { id, promise: this.call(type, payload, options) };
  }

  abort(id) {
    this.post({ type: 'abort', target: id });
  }

  post(message, transfer) {
    if (this.dead) return;
    try {
      this.worker.postMessage(message, transfer ?? []);
    } catch (e) {
      this.kill(makeError('internal', `Could not send a request to the engine worker: ${e?.message ?? e}`, { details: { fatal: true } }));
    }
  }

  /** Ends the worker; every pending request rejects with `error`. */
  kill(error) {
    if (this.dead) return;
    this.dead = error;
    this.worker.terminate();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      p.cleanup?.();
      p.reject(error);
    }
  }
}

// --------------------------------------------------------------------- images

/** A picture encoded on the GPU (its CLIP features), usable by generate() until released. */
export class LlamaAdapterImage {
  #model;
  #released = false;
  constructor(model, handle, width, height) {
    this.#model = model;
    /** The engine's handle. */
    this.handle = handle;
    /** Size of the source picture, when known on the main thread. */
    this.width = width ?? null;
    this.height = height ?? null;
    Object.freeze(this);
  }
  get released() {
    return this.#released;
  }
  /** Frees the engine's copy. Never throws. */
  release() {
    if (this.#released) return;
    this.#released = true;
    this.#model._releaseImage(this.handle);
  }
}

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function isPngOrJpeg(bytes) {
  if (bytes.length >= 8 && PNG.every((b, i) => bytes[i] === b)) return true;
  return bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
}

function isDrawable(s) {
  const g = globalThis;
  return (
    (g.ImageBitmap && s instanceof g.ImageBitmap) ||
    (g.HTMLImageElement && s instanceof g.HTMLImageElement) ||
    (g.HTMLCanvasElement && s instanceof g.HTMLCanvasElement) ||
    (g.OffscreenCanvas && s instanceof g.OffscreenCanvas) ||
    (g.HTMLVideoElement && s instanceof g.HTMLVideoElement) ||
    (g.SVGImageElement && s instanceof g.SVGImageElement) ||
    (g.VideoFrame && s instanceof g.VideoFrame)
  );
}

function drawableSize(s) {
  if ('naturalWidth' in s && s.naturalWidth) return [s.naturalWidth, s.naturalHeight];
  if ('videoWidth' in s && s.videoWidth) return [s.videoWidth, s.videoHeight];
  if ('displayWidth' in s) return [s.displayWidth, s.displayHeight];
  return [s.width?.baseVal?.value ?? s.width, s.height?.baseVal?.value ?? s.height];
}

function canvas2d(width, height) {
  const canvas = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(width, height) : Object.assign(document.createElement('canvas'), { width, height });
  const ctx = canvas.getContext('2d', { willReadFrequently: true, colorSpace: 'srgb' });
  if (!ctx) throw makeError('bad-input', 'This browser gave no 2D canvas to read the picture\'s pixels');
  return ctx;
}

/** Pixels of anything drawImage takes, as RGBA8 (sRGB). */
async function rasterize(source) {
  if (globalThis.HTMLImageElement && source instanceof HTMLImageElement && !source.complete) {
    try {
      await source.decode();
    } catch (e) {
      throw makeError('bad-input', `The <img> could not be decoded: ${e?.message ?? e}`);
    }
  }
  const [width, height] = drawableSize(source).map((v) => Math.round(Number(v) || 0));
  if (!width || !height) throw makeError('bad-input', 'The picture has no pixels (is it loaded?)');
  const ctx = canvas2d(width, height);
  ctx.drawImage(source, 0, 0, width, height);
  let data;
  try {
    data = ctx.getImageData(0, 0, width, height, { colorSpace: 'srgb' });
  } catch (e) {
    throw makeError('bad-input', `The picture's pixels cannot be read (a cross-origin image without CORS taints the canvas): ${e?.message ?? e}`, { cause: e });
  }
  return { rgba: data.data.buffer, width, height };
}

/** Decodes file bytes the engine cannot (WebP, GIF, AVIF, BMP, ...) with the browser. Null when it cannot either. */
async function browserDecode(bytes) {
  if (typeof createImageBitmap !== 'function') return null;
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
  } catch {
    return null;
  }
  try {
    return await rasterize(bitmap);
  } finally {
    bitmap.close?.();
  }
}

/**
 * Any supported picture source → a worker request. PNG/JPEG file bytes go to
 * the engine's own decoder (the same as the native tool, so results match it
 * exactly); pixels go as RGBA.
 */
async function imageRequest(source) {
  if (source instanceof LlamaAdapterImage) throw makeError('bad-input', 'This picture is already encoded: pass it to generate({ image })');
  let bytes = null;
  if (typeof source === 'string' || source instanceof URL) {
    const url = absoluteUrl(source, 'The picture URL');
    let response;
    try {
      response = await fetch(url);
    } catch (e) {
      throw makeError('network', `Could not download the picture ${url}: ${e?.message ?? e}`, { cause: e });
    }
    if (!response.ok) throw makeError('network', `The server answered ${response.status} for the picture ${url}`);
    bytes = new Uint8Array(await response.arrayBuffer());
  } else if (typeof Blob !== 'undefined' && source instanceof Blob) {
    bytes = new Uint8Array(await source.arrayBuffer());
  } else if (source instanceof ArrayBuffer) {
    bytes = new Uint8Array(source.slice(0)); // a copy: the caller keeps theirs
  } else if (ArrayBuffer.isView(source)) {
    bytes = new Uint8Array(source.buffer.slice(source.byteOffset, source.byteOffset + source.byteLength));
  } else if (source && typeof source === 'object' && 'data' in source && 'width' in source && 'height' in source && !isDrawable(source)) {
    // ImageData, or any { data: RGBA8, width, height }.
    const { width, height } = source;
    const data = source.data;
    if (!ArrayBuffer.isView(data) || data.BYTES_PER_ELEMENT !== 1) throw makeError('bad-input', 'ImageData-like input needs data as RGBA8 bytes (Uint8ClampedArray or Uint8Array)');
    if (data.byteLength !== width * height * 4) throw makeError('bad-input', `${data.byteLength} bytes of RGBA for a ${width}×${height} picture (expected ${width * height * 4})`);
    const rgba = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
    return { type: 'encodeImageRgba', payload: { rgba, width, height }, transfer: [rgba], width, height };
  } else if (source && isDrawable(source)) {
    const { rgba, width, height } = await rasterize(source);
    return { type: 'encodeImageRgba', payload: { rgba, width, height }, transfer: [rgba], width, height };
  } else {
    throw makeError('bad-input', 'encodeImage takes a Blob/File, an ArrayBuffer or typed array of PNG/JPEG bytes, a URL, an ImageBitmap, ImageData, an <img>, <canvas>, <video> or OffscreenCanvas');
  }
  if (!isPngOrJpeg(bytes)) {
    const decoded = await browserDecode(bytes);
    if (decoded) return { type: 'encodeImageRgba', payload: decoded, transfer: [decoded.rgba], width: decoded.width, height: decoded.height };
    // Not something the browser reads either: the engine says what it is not.
  }
  return { type: 'encodeImage', payload: { bytes: bytes.buffer }, transfer: [bytes.buffer] };
}

// ----------------------------------------------------------------- generation

/**
 * One generation: an async iterable of { text, tokenId } pieces; `result`
 * resolves to the whole result once it ends.
 */
class Generation {
  #queue = [];
  #waiter = null;
  #finished = false;
  #error = null;
  #errorThrown = false;
  #result = null;
  #settled;
  #resolveSettled;
  #stop = null;
  #resultPromise = null;

  constructor(run) {
    this.#settled = new Promise((resolve) => {
      this.#resolveSettled = resolve;
    });
    run({
      token: (piece) => {
        this.#queue.push(piece);
        this.#wake();
      },
      stopWith: (fn) => {
        this.#stop = fn;
      },
    }).then(
      (result) => this.#end(null, result),
      (error) => this.#end(error, null),
    );
  }

  #end(error, result) {
    this.#finished = true;
    this.#error = error;
    this.#result = result;
    this.#resolveSettled();
    this.#wake();
  }

  #wake() {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  async next() {
    for (;;) {
      if (this.#queue.length) return { value: this.#queue.shift(), done: false };
      if (this.#finished) {
        if (this.#error && !this.#errorThrown) {
          this.#errorThrown = true;
          throw this.#error;
        }
        return { value: undefined, done: true };
      }
      await new Promise((resolve) => {
        this.#waiter = resolve;
      });
    }
  }

  /** Leaving a for-await loop early (break/return/throw) stops the generation and waits until the engine is idle. */
  async return(value) {
    if (!this.#finished) this.#stop?.();
    await this.#settled;
    this.#queue.length = 0;
    this.#errorThrown = true;
    return { value, done: true };
  }

  /** The final result (ids, text, timings); rejects with the generation's error. */
  get result() {
    this.#resultPromise ??= this.#settled.then(() => {
      if (this.#error) throw this.#error;
      return this.#result;
    });
    return this.#resultPromise;
  }

  /** Convenience: the whole text once the generation ends. */
  async text() {
    return (await this.result).text;
  }
}

// ---------------------------------------------------------------- the model

function freezeDeep(o) {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) freezeDeep(v);
  }
  return o;
}

function buildInfo(urls, loaded, previous) {
  const m = loaded.modelInfo ?? {};
  const baseFiles = loaded.files.filter((f) => f.package === 'base');
  const adapterFiles = loaded.files.filter((f) => f.package === 'adapter');
  return freezeDeep({
    base: previous && !loaded.baseManifestSha256 ? previous.base : { url: urls.base, sha256: m.baseSha256 ?? loaded.baseManifestSha256, files: baseFiles },
    adapter: { url: urls.adapter, sha256: m.adapterSha256 ?? loaded.adapterManifestSha256, config: m.config?.adapter ?? null, files: adapterFiles },
    config: m.config ?? null,
    gpu: loaded.gpu,
    gpuBytes: m.gpuBytes ?? null,
    fit: loaded.fit,
    fromCache: loaded.fromCache,
    manifestFromCache: loaded.manifestFromCache,
    bytes: { total: loaded.totalBytes, fromNetwork: loaded.networkBytes, fromCache: loaded.cachedBytes },
    cache: loaded.cache,
    cacheError: loaded.cache?.error ?? null,
    storage: loaded.storage,
    wasmMemoryBytes: loaded.wasmMemoryBytes,
    largestShardBytes: loaded.largestShardBytes,
    loadMs: loaded.loadMs,
  });
}

function checkSignal(signal, what) {
  if (signal != null && !(typeof signal === 'object' && 'aborted' in signal && typeof signal.addEventListener === 'function')) {
    throw makeError('bad-input', `${what}: signal must be an AbortSignal`);
  }
}

export class LlamaAdapter {
  #worker;
  #info;
  #urls;
  #cache;
  #disposed = false;
  #lastResult = null;

  /** @private use LlamaAdapter.load() */
  constructor(worker, urls, loaded, cache) {
    if (!(worker instanceof EngineWorker)) throw new TypeError('use LlamaAdapter.load() to create a model');
    this.#worker = worker;
    this.#urls = urls;
    this.#cache = cache;
    this.#info = buildInfo(urls, loaded, null);
  }

  /** Every error code (LlamaAdapterError.code) this module uses. */
  static get ERROR_CODES() {
    return ERROR_CODES;
  }

  /** Whether this browser can run the model, and on which GPU. Never throws. */
  static async checkSupport(options = {}) {
    if (!hasWebgpu()) return { webgpu: false, code: 'no-webgpu', adapter: null, reason: noWebgpuReason() };
    let worker = null;
    let timer;
    try {
      worker = new EngineWorker();
      const answer = await Promise.race([
        worker.call('checkSupport', { wasmUrl: options.wasmUrl ? absoluteUrl(options.wasmUrl, 'wasmUrl') : undefined }),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${CHECK_SUPPORT_TIMEOUT_MS / 1000} s`)), CHECK_SUPPORT_TIMEOUT_MS);
        }),
      ]);
      if (answer?.webgpu) return { webgpu: true, code: null, adapter: answer.adapter ?? null, reason: null };
      return { webgpu: false, code: 'no-adapter', adapter: null, reason: withAdvice('no-webgpu', answer?.reason ?? 'the browser gave no WebGPU adapter') };
    } catch (e) {
      // The browser has WebGPU, but the engine itself did not start (its files
      // missing or damaged, or blocked): not the browser's fault.
      return { webgpu: false, code: 'engine', adapter: null, reason: `The engine did not start, so WebGPU support could not be checked: ${e?.message ?? e}. Reload the page; if this repeats, the site's files are incomplete.` };
    } finally {
      clearTimeout(timer);
      worker?.kill(makeError('disposed', 'support check finished'));
    }
  }

  /**
   * Checks a base + adapter without loading them: fetches the two manifests
   * and runs every check `load` runs before its first shard (formats, config,
   * the adapter's base, the fit on this device), in a short-lived worker.
   * Resolves to { fit, totalBytes, files, ... }; rejects as `load` would.
   * A page can check a new model before disposing the one it has.
   */
  static async check(options = {}) {
    if (options == null || typeof options !== 'object') throw makeError('bad-input', 'check() takes { base, adapter, signal }');
    const { signal, wasmUrl } = options;
    checkSignal(signal, 'check');
    const urls = { base: absoluteUrl(options.base, 'The base model (options.base)'), adapter: absoluteUrl(options.adapter, 'The adapter (options.adapter)') };
    if (!hasWebgpu()) throw makeError('no-webgpu', noWebgpuReason());
    const worker = new EngineWorker();
    try {
      return await worker.call('check', { base: urls.base, adapter: urls.adapter, wasmUrl: wasmUrl ? absoluteUrl(wasmUrl, 'wasmUrl') : undefined }, { signal, rejectOnAbort: true });
    } catch (e) {
      throw e instanceof LlamaAdapterError ? e : makeError('internal', String(e?.message ?? e), { cause: e });
    } finally {
      worker.kill(makeError('disposed', 'check finished'));
    }
  }

  /**
   * Downloads (or reads from the cache), verifies and uploads a base model and
   * an adapter, in a new worker. Resolves once the model can generate.
   */
  static async load(options = {}) {
    if (options == null || typeof options !== 'object') throw makeError('bad-input', 'load() takes { base, adapter, onProgress, signal, cache }');
    const { onProgress, signal, cache = true, wasmUrl } = options;
    checkSignal(signal, 'load');
    const urls = { base: absoluteUrl(options.base, 'The base model (options.base)'), adapter: absoluteUrl(options.adapter, 'The adapter (options.adapter)') };
    if (signal?.aborted) throw abortError('The load');
    if (!hasWebgpu()) throw makeError('no-webgpu', noWebgpuReason());
    const worker = new EngineWorker();
    try {
      const loaded = await worker.call(
        'load',
        { base: urls.base, adapter: urls.adapter, cache: cache !== false, wasmUrl: wasmUrl ? absoluteUrl(wasmUrl, 'wasmUrl') : undefined },
        { onProgress: (event) => safeCall(onProgress, event), signal, rejectOnAbort: true },
      );
      return new LlamaAdapter(worker, urls, loaded, cache !== false);
    } catch (e) {
      // A failed load leaves nothing worth keeping: the next load starts a fresh worker and device.
      worker.kill(e instanceof LlamaAdapterError ? e : makeError('internal', String(e?.message ?? e)));
      throw e instanceof LlamaAdapterError ? e : makeError('internal', String(e?.message ?? e), { cause: e });
    }
  }

  /** Deletes every model this origin stored in the Cache API. Resolves to whether there was a cache to delete. */
  static async clearCache() {
    return clearModelCache();
  }

  /** What is loaded, where it came from, and what it costs (see index.d.ts ModelInfo). */
  get info() {
    return this.#info;
  }

  /** The result of the last generation that ended (null before the first). */
  get lastResult() {
    return this.#lastResult;
  }

  /** Whether dispose() was called or the engine died (device lost, crash). */
  get disposed() {
    return this.#disposed || !!this.#worker.dead;
  }

  #alive() {
    if (this.#worker.dead) throw this.#worker.dead;
    if (this.#disposed) throw makeError('disposed', 'This model was disposed');
  }

  /** Encodes a picture once; pass the returned image to generate({ image }) as often as you like. */
  async encodeImage(source) {
    this.#alive();
    const req = await imageRequest(source);
    this.#alive();
    const handle = await this.#worker.call(req.type, req.payload, { transfer: req.transfer });
    return new LlamaAdapterImage(this, handle, req.width, req.height);
  }

  /** @internal */
  _releaseImage(handle) {
    if (!this.#disposed && !this.#worker.dead) this.#worker.call('releaseImage', { handle }).catch(() => {});
  }

  /**
   * Generates text; iterate the returned object with for await for the pieces
   * as they come, or await its .result / .text().
   */
  generate(options = {}) {
    return new Generation(async ({ token, stopWith }) => {
      this.#alive();
      if (options == null || typeof options !== 'object') throw makeError('bad-input', 'generate() takes { prompt, input, image, maxNewTokens, temperature, topP, seed, signal }');
      const { signal } = options;
      checkSignal(signal, 'generate');
      if (typeof options.prompt !== 'string') throw makeError('bad-input', 'generate() needs a prompt (a string)');
      for (const k of ['maxNewTokens', 'temperature', 'topP', 'seed']) {
        const v = options[k];
        if (v !== undefined && v !== null && (typeof v !== 'number' || !Number.isFinite(v) || v < 0)) throw makeError('bad-input', `${k} must be a number ≥ 0 (got ${String(v)})`, { details: { field: k } });
      }
      if (options.maxNewTokens != null && !Number.isInteger(options.maxNewTokens)) throw makeError('bad-input', 'maxNewTokens must be a whole number', { details: { field: 'maxNewTokens' } });
      if (signal?.aborted) throw abortError('The generation');

      let image = options.image;
      let temporary = null;
      if (image instanceof LlamaAdapterImage) {
        if (image.released) throw makeError('bad-input', 'This picture was released');
        image = image.handle;
      } else if (image != null && typeof image !== 'number') {
        try {
          temporary = await this.encodeImage(image);
        } catch (e) {
          // Say which argument was wrong: the picture, not the prompt.
          if (e?.code === 'bad-input') throw makeError('bad-input', e.message, { cause: e, details: { ...(e.details ?? {}), field: 'image' } });
          throw e;
        }
        image = temporary.handle;
      }
      try {
        const request = {
          prompt: options.prompt,
          input: options.input ?? undefined,
          image: image ?? undefined,
          maxNewTokens: options.maxNewTokens ?? undefined,
          temperature: options.temperature ?? undefined,
          topP: options.topP ?? undefined,
          seed: options.seed ?? undefined,
        };
        const { id, promise } = this.#worker.start('generate', { request }, { signal, onToken: (m) => token({ text: m.text, tokenId: m.tokenId }) });
        stopWith(() => this.#worker.abort(id));
        const result = await promise;
        this.#lastResult = result;
        return result;
      } finally {
        temporary?.release();
      }
    });
  }

  /** Generates and resolves to the whole result (no streaming). */
  async complete(options = {}) {
    return this.generate(options).result;
  }

  /**
   * Swaps the adapter; the base stays on the GPU and none of its files are
   * fetched. On failure the previous adapter stays loaded and usable.
   */
  async setAdapter(adapter, options = {}) {
    this.#alive();
    const { onProgress, signal } = options;
    checkSignal(signal, 'setAdapter');
    const url = absoluteUrl(adapter, 'The adapter');
    const cache = options.cache ?? this.#cache;
    const loaded = await this.#worker.call('setAdapter', { adapter: url, cache: cache !== false }, { onProgress: (event) => safeCall(onProgress, event), signal });
    this.#urls = { ...this.#urls, adapter: url };
    this.#info = buildInfo(this.#urls, loaded, this.#info);
    return this.#info;
  }

  /** Current wasm memory (linear memory only grows, so this is also the peak) and GPU bytes of the model. */
  async memoryUsage() {
    this.#alive();
    const s = await this.#worker.call('stats');
    return { wasmMemoryBytes: s.wasmMemoryBytes, gpuBytes: s.modelInfo?.gpuBytes ?? null };
  }

  /**
   * Bench: GPU time per kernel of one forward pass of `tokens` tokens from
   * `position` (the default, 1 token, is a decode step), each dispatch timed
   * alone. Resolves to `[{ label, workgroups, dispatches, ms }]`.
   */
  async profile(options = {}) {
    this.#alive();
    const tokens = options.tokens ?? 1;
    const position = options.position ?? 0;
    const reps = options.reps ?? 5;
    for (const [k, v] of Object.entries({ tokens, position, reps })) {
      if (!Number.isInteger(v) || v < 0) throw makeError('bad-input', `${k} must be a whole number ≥ 0 (got ${String(v)})`, { details: { field: k } });
    }
    let image = options.image;
    if (image instanceof LlamaAdapterImage) {
      if (image.released) throw makeError('bad-input', 'This picture was released');
      image = image.handle;
    } else if (image != null) {
      throw makeError('bad-input', 'profile() takes a picture from encodeImage()', { details: { field: 'image' } });
    }
    return this.#worker.call('profile', { request: { tokens, position, reps, image: image ?? undefined } });
  }

  /** Test hook: destroys the GPU device as a driver reset would. Calls after it reject with 'device-lost'. */
  async _destroyDeviceForTesting() {
    this.#alive();
    await this.#worker.call('destroyDevice');
  }

  /** Test hook: makes the engine panic as a bug would. The call rejects with 'internal'; so do later calls; a new load works. */
  async _panicForTesting() {
    this.#alive();
    await this.#worker.call('panic');
  }

  /** Frees the GPU memory and ends the worker. Pending calls reject with 'disposed'. Safe to call twice. */
  async dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#worker.dead) return;
    let timer;
    await Promise.race([
      this.#worker.call('dispose').catch(() => {}),
      new Promise((resolve) => {
        timer = setTimeout(resolve, DISPOSE_GRACE_MS);
      }),
    ]);
    clearTimeout(timer);
    this.#worker.kill(makeError('disposed', 'This model was disposed'));
  }
}

if (typeof Symbol.asyncDispose === 'symbol') {
  LlamaAdapter.prototype[Symbol.asyncDispose] = function () {
    return this.dispose();
  };
}

export default LlamaAdapter;
