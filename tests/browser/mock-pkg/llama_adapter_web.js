// A stand-in for the wasm package (www/pkg), in plain JS, with the same
// exports and error codes as the real one. It checks sizes but computes
// nothing real: tokens come from a counter. It exists to develop and debug
// the JS loader (progress, cache, abort, busy) without a Rust build:
//   LAW_MOCK_PKG=1 node --test tests/browser/loader.test.mjs
// The real suite always runs against www/pkg.

function err(code, message) {
  const e = new Error(message);
  e.name = 'LlamaAdapterError';
  e.code = code;
  return e;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let memory = 16 * 1024 * 1024;

export default async function init() {}

export async function checkSupport() {
  if (!navigator.gpu) return { webgpu: false, reason: 'no navigator.gpu (mock)' };
  const a = await navigator.gpu.requestAdapter();
  if (!a) return { webgpu: false, reason: 'no adapter (mock)' };
  return { webgpu: true, adapter: { name: 'mock', backend: 'BrowserWebGpu', deviceType: 'Cpu', shaderF16: false, subgroups: false, timestamps: false, maxStorageBinding: a.limits.maxStorageBufferBindingSize, maxBufferSize: a.limits.maxBufferSize, summary: 'mock' } };
}

export class Engine {
  static async create() {
    if (!navigator.gpu) throw err('no-webgpu', 'no WebGPU (mock)');
    const e = new Engine();
    e.model = null;
    e.pending = null;
    e.images = new Map();
    e.nextImage = 1;
    e.generating = false;
    e.lost = false;
    return e;
  }
  adapterInfo() {
    return { name: 'mock', backend: 'BrowserWebGpu', deviceType: 'Cpu', shaderF16: false, subgroups: false, timestamps: false, maxStorageBinding: 1 << 30, maxBufferSize: 1 << 30, summary: 'mock' };
  }
  wasmMemoryBytes() {
    return memory;
  }
  #check() {
    if (this.lost) throw err('device-lost', 'The GPU device was lost (mock)');
  }
  beginLoad(baseBytes, adapterBytes) {
    this.#check();
    if (this.generating) throw err('busy', 'generating');
    const dec = (b) => {
      try {
        return JSON.parse(new TextDecoder().decode(b));
      } catch (e) {
        throw err('bad-format', `manifest: ${e.message}`);
      }
    };
    const base = baseBytes ? dec(baseBytes) : null;
    const adapter = dec(adapterBytes);
    if (!base && !this.model) throw err('bad-input', 'no base loaded');
    if (base && base.config.llama.max_seq_len > 1e6) throw err('does-not-fit', 'needs 1 TB of KV cache, the device offers 1 GiB (mock)');
    const pkg = (m, withTok) => ({ manifestSha256: 'mock', shards: m.shards.map((s) => ({ ...s })), tokenizer: withTok ? { ...m.tokenizer } : null });
    const plan = { base: base ? pkg(base, true) : null, adapter: pkg(adapter, false), fit: { weightBytes: 1, kvCacheBytes: 1, activationBytes: 1, totalBytes: 3, largestBinding: 1, maxStorageBinding: 1 << 30, maxBufferSize: 1 << 30 } };
    plan.totalBytes = [...(plan.base ? [...plan.base.shards, plan.base.tokenizer] : []), ...plan.adapter.shards].reduce((s, f) => s + f.bytes, 0);
    this.pending = { plan, written: new Set(), tokenizer: false, allocated: false };
    return plan;
  }
  async allocate() {
    this.#check();
    await sleep(5);
    if (!this.pending) throw err('aborted', 'cancelled');
    this.pending.allocated = true;
  }
  writeShard(pkg, index, bytes) {
    this.#check();
    const p = this.pending;
    if (!p?.allocated) throw err('bad-input', 'writeShard before allocate');
    const s = p.plan[pkg]?.shards[index];
    if (!s) throw err('bad-input', `no shard ${pkg} ${index}`);
    if (bytes.length !== s.bytes) throw err('integrity', `shard ${s.file}: ${bytes.length} bytes, expected ${s.bytes}`);
    memory = Math.max(memory, 16 * 1024 * 1024 + bytes.length);
    p.written.add(`${pkg}/${index}`);
  }
  setTokenizer(bytes) {
    const p = this.pending;
    if (!p?.plan.base) throw err('bad-input', 'no tokenizer needed');
    if (bytes.length !== p.plan.base.tokenizer.bytes) throw err('integrity', 'tokenizer size');
    p.tokenizer = true;
  }
  async finishLoad() {
    this.#check();
    const p = this.pending;
    this.pending = null;
    if (!p) throw err('bad-input', 'finishLoad before beginLoad');
    const need = (p.plan.base ? p.plan.base.shards.length : 0) + p.plan.adapter.shards.length;
    if (p.written.size !== need) throw err('bad-input', `${p.written.size} of ${need} shards written`);
    await sleep(20);
    this.model = { adapterId: (this.model?.adapterId ?? 0) + 1 };
  }
  cancelLoad() {
    this.pending = null;
  }
  modelInfo() {
    return this.model ? { config: { llama: { max_seq_len: 512 }, adapter: {} }, baseSha256: 'mock', adapterSha256: 'mock', gpuBytes: 1 } : null;
  }
  async encodeImage(bytes) {
    this.#check();
    if (!this.model) throw err('bad-input', 'no model');
    const png = bytes[0] === 0x89 && bytes[1] === 0x50;
    const jpg = bytes[0] === 0xff && bytes[1] === 0xd8;
    if (!png && !jpg) throw err('bad-input', 'This is not a picture the model can read (mock)');
    const h = this.nextImage++;
    this.images.set(h, bytes.length);
    return h;
  }
  async encodeImageRgba(rgba, w, h) {
    if (rgba.length !== w * h * 4) throw err('bad-input', 'size');
    const id = this.nextImage++;
    this.images.set(id, rgba.length);
    return id;
  }
  releaseImage(h) {
    this.images.delete(h);
  }
  async generate(req, onToken) {
    this.#check();
    if (this.generating) throw err('busy', 'a generation is already running');
    this.generating = true;
    try {
      if (!this.model) throw err('bad-input', 'no model');
      const n = req.maxNewTokens ?? 32;
      if (n > 500) throw err('context-overflow', 'prompt + new tokens exceed the context of 512');
      const seed = (req.image ?? 0) * 1000 + this.model.adapterId * 100;
      const ids = [];
      let stopped = false;
      for (let i = 0; i < n; i++) {
        await sleep(10);
        this.#check();
        const id = seed + i;
        ids.push(id);
        if (onToken(id, ` t${id}`) === false) {
          stopped = true;
          break;
        }
      }
      return { promptIds: [1, 2, 3], generatedIds: ids, text: ids.map((i) => ` t${i}`).join(''), stoppedAtEos: false, stopped, timings: { prefillMs: 1, decodeMs: 1, prefillTokensPerS: 1, decodeTokensPerS: 1 } };
    } finally {
      this.generating = false;
    }
  }
  destroyDevice() {
    this.lost = true;
  }
  free() {}
}
