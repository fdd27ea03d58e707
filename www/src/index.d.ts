// Types of llama-adapter-web (hand-written; the module is plain JavaScript).

/**
 * Every code a {@link LlamaAdapterError} can carry.
 *
 * - `no-webgpu`: the browser offers no WebGPU, or no adapter. The message names the browsers and flags that work.
 * - `does-not-fit`: the model needs more GPU memory or larger buffers than the device offers (checked before any download; `details` may say needed vs offered).
 * - `integrity`: a downloaded file does not match its manifest (size or sha256).
 * - `aborted`: an AbortSignal stopped the operation; the model (if any) stays usable.
 * - `device-lost`: the GPU device was lost. The model is unusable; `LlamaAdapter.load` again (no page reload needed).
 * - `bad-input`: an argument the engine cannot use (not a picture, empty prompt, bad option).
 * - `context-overflow`: prompt tokens + `maxNewTokens` exceed the model's context.
 * - `wrong-base`: the adapter was converted for another base model.
 * - `bad-format`: a manifest this version does not read.
 * - `busy`: a generation is already running on this model.
 * - `internal`: a bug (a Rust panic traps the wasm). The model is unusable; the next `load` starts a fresh engine.
 * - `network`: a download failed (offline, HTTP error, connection closed). Files already stored are kept: a retry resumes.
 * - `quota`: the browser's storage quota was exceeded where storing was needed. A full quota never fails a load: the load continues from memory and reports it in `ModelInfo.cacheError`.
 * - `disposed`: the model was disposed.
 */
export type LlamaAdapterErrorCode =
  | 'no-webgpu'
  | 'does-not-fit'
  | 'integrity'
  | 'aborted'
  | 'device-lost'
  | 'bad-input'
  | 'context-overflow'
  | 'wrong-base'
  | 'bad-format'
  | 'busy'
  | 'internal'
  | 'network'
  | 'quota'
  | 'disposed';

/** All error codes, in a frozen array. */
export const ERROR_CODES: readonly LlamaAdapterErrorCode[];

/** Name of the Cache API cache that holds downloaded models (`llama-adapter-web-models-v1`). */
export const CACHE_NAME: string;

/**
 * The only error type this module rejects with. `message` is written for a
 * person: it says what went wrong and what to do.
 */
export class LlamaAdapterError extends Error {
  constructor(code: LlamaAdapterErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> });
  readonly name: 'LlamaAdapterError';
  readonly code: LlamaAdapterErrorCode;
  /** The underlying error, where there is one. */
  readonly cause?: unknown;
  /**
   * Machine-readable extras: e.g. `field` (bad-input: which option of `generate` was wrong), `url`, `status` (network), `expected`/`actual` (integrity),
   * `partial` (the result so far, on an aborted generation), `trap` (internal).
   */
  readonly details: Record<string, unknown>;
}

/** The GPU adapter the engine uses. */
export interface GpuAdapterInfo {
  name: string;
  backend: string;
  deviceType: string;
  shaderF16: boolean;
  subgroups: boolean;
  timestamps: boolean;
  /** maxStorageBufferBindingSize, bytes. */
  maxStorageBinding: number;
  maxBufferSize: number;
  /** One line for people. */
  summary: string;
}

export interface SupportReport {
  /** True when a model can be loaded here. */
  webgpu: boolean;
  /**
   * Why not, as a code: `no-webgpu` (the browser has no `navigator.gpu`),
   * `no-adapter` (it has WebGPU but gave no adapter: flags, blocklisted GPU),
   * `engine` (the engine's own files failed to start); null when supported.
   */
  code: 'no-webgpu' | 'no-adapter' | 'engine' | null;
  adapter: GpuAdapterInfo | null;
  /** Why not, for a person (names the browsers and flags that work); null when supported. */
  reason: string | null;
}

export type LoadPhase =
  /** network bytes arriving (several events per file) */
  | 'download'
  /** a file read (and verified) from the Cache API */
  | 'cache'
  /** a downloaded file's sha256 being checked */
  | 'verify'
  /** a file being written to GPU buffers */
  | 'upload'
  /** building the model and compiling GPU pipelines (after every file) */
  | 'compile'
  /** the model is usable (last event; loadedBytes === totalBytes) */
  | 'ready';

export interface ProgressShard {
  package: 'base' | 'adapter';
  /** `tokenizer` for the base's tokenizer.json (index -1). */
  kind: 'shard' | 'tokenizer';
  index: number;
  /** File name from the manifest. */
  file: string;
  /** Absolute URL. */
  url: string;
  bytes: number;
}

/**
 * One progress event. Within one load, `loadedBytes` never decreases,
 * `totalBytes` is constant (all shard + tokenizer bytes of the load's plan,
 * manifests not counted), and the last event is `ready` with
 * `loadedBytes === totalBytes`. Bytes count when they arrive from the network
 * or are read from the cache; `verify`, `upload`, `compile` do not add bytes.
 */
export interface LoadProgress {
  phase: LoadPhase;
  loadedBytes: number;
  totalBytes: number;
  /** The file this event is about; null for `compile` and `ready`. */
  shard: ProgressShard | null;
  /** The file came from the cache (for `ready`: every file did). */
  fromCache: boolean;
}

export interface LoadOptions {
  /** URL of the base package's manifest.json (relative URLs resolve against the page). Shard URLs resolve against it. */
  base: string | URL;
  /** URL of the adapter package's manifest.json. */
  adapter: string | URL;
  onProgress?: (event: LoadProgress) => void;
  /** Aborting rejects the load at once with code `aborted`; downloads stop, files already stored stay stored. */
  signal?: AbortSignal;
  /**
   * Store verified files in the Cache API (default true) so later loads, in any tab, make no shard requests.
   * A full quota never fails the load: it continues from memory and sets `info.cacheError`.
   */
  cache?: boolean;
  /** Where the engine's .wasm is, when not at `../pkg/llama_adapter_web_bg.wasm` next to this module. */
  wasmUrl?: string | URL;
}

export interface SetAdapterOptions {
  onProgress?: (event: LoadProgress) => void;
  /** Aborting rejects with `aborted`; the previous adapter stays loaded. */
  signal?: AbortSignal;
  /** Default: what `load` was given. */
  cache?: boolean;
}

export interface ModelFile {
  package: 'base' | 'adapter';
  kind: 'shard' | 'tokenizer';
  index: number;
  file: string;
  url: string;
  bytes: number;
  sha256: string;
  fromCache: boolean;
}

export interface FitReport {
  weightBytes: number;
  kvCacheBytes: number;
  activationBytes: number;
  totalBytes: number;
  largestBinding: number;
  maxStorageBinding: number;
  maxBufferSize: number;
}

/** Model config as the manifests give it (`llama`, `clip`, `adapter` sections). */
export interface ModelConfig {
  llama: {
    dim: number;
    ffn_hidden: number;
    max_seq_len: number;
    n_heads: number;
    n_layers: number;
    norm_eps: number;
    rope_theta: number;
    vocab_size: number;
    [key: string]: unknown;
  };
  clip: { [key: string]: unknown };
  adapter: { [key: string]: unknown };
  [key: string]: unknown;
}

export interface ModelInfo {
  base: { url: string; sha256: string; files: ModelFile[] };
  adapter: { url: string; sha256: string; config: ModelConfig['adapter'] | null; files: ModelFile[] };
  config: ModelConfig | null;
  /** The GPU adapter in use. */
  gpu: GpuAdapterInfo;
  /** GPU memory the model's buffers take. */
  gpuBytes: number | null;
  fit: FitReport;
  /** Every file of the last load (or setAdapter) came from the cache. */
  fromCache: boolean;
  /** A manifest came from the cache because the network failed (offline start). */
  manifestFromCache: boolean;
  /** Bytes of the last load (or setAdapter): its total, and how they arrived. */
  bytes: { total: number; fromNetwork: number; fromCache: number };
  cache: { enabled: boolean; name: string; error: string | null; errorCode: 'quota' | 'cache' | null; evicted: string[]; pruned: number };
  /** Why the model is not (fully) cached, for a person; null when it is (or caching was off). */
  cacheError: string | null;
  /** navigator.storage.estimate() after the load. */
  storage: { usage: number | null; quota: number | null } | null;
  /** wasm linear memory at the end of the load (it only grows, so this is the load's peak). */
  wasmMemoryBytes: number;
  largestShardBytes: number;
  loadMs: number;
}

/**
 * A picture source for {@link LlamaAdapter.encodeImage}. PNG and JPEG bytes
 * (Blob, File, ArrayBuffer, typed array, URL) are decoded by the engine
 * exactly as the native tool does; other formats are decoded by the browser.
 * Pixel sources (ImageBitmap, ImageData, canvas, <img>, <video>, VideoFrame)
 * are read as sRGB RGBA.
 */
export type ImageSource =
  | Blob
  | ArrayBuffer
  | ArrayBufferView
  | string
  | URL
  | ImageBitmap
  | ImageData
  | { data: Uint8Array | Uint8ClampedArray; width: number; height: number }
  | HTMLImageElement
  | HTMLCanvasElement
  | HTMLVideoElement
  | SVGImageElement
  | OffscreenCanvas
  | VideoFrame;

/** A picture encoded on the GPU. Reusable across generations and across setAdapter. */
export class LlamaAdapterImage {
  private constructor();
  readonly handle: number;
  readonly width: number | null;
  readonly height: number | null;
  readonly released: boolean;
  /** Frees the engine's copy. */
  release(): void;
}

export interface GenerateOptions {
  /** The instruction. */
  prompt: string;
  /** Optional input paragraph (selects the Alpaca template with input). */
  input?: string;
  /** An encoded picture (reused), or any picture source (encoded for this call only). Without it: text only. */
  image?: LlamaAdapterImage | ImageSource | number | null;
  /** Default: the engine's (256). prompt + maxNewTokens must fit the context, else `context-overflow`. */
  maxNewTokens?: number;
  /** 0 = greedy (deterministic, same ids as the native tool). Default 0.1. */
  temperature?: number;
  /** Nucleus sampling mass. Default 0.75. */
  topP?: number;
  /** Sampling seed (integer ≥ 0). Default 0. */
  seed?: number;
  /** Aborting stops after the current token; the iteration then throws `aborted` (details.partial holds the result so far). */
  signal?: AbortSignal;
}

export interface GeneratePiece {
  /** The text this token adds (may be empty for part of a multi-byte character). */
  text: string;
  tokenId: number;
}

export interface GenerateResult {
  promptIds: number[];
  generatedIds: number[];
  text: string;
  stoppedAtEos: boolean;
  /** Stopped early on request. */
  stopped: boolean;
  timings: { prefillMs: number; decodeMs: number; prefillTokensPerS: number; decodeTokensPerS: number };
}

/**
 * A running generation. Iterate it (`for await`) for pieces as they come;
 * leaving the loop early stops the generation (and waits until the engine is
 * idle). Errors are thrown from the iteration as {@link LlamaAdapterError}.
 */
/** One kernel's share of a profiled forward pass (`LlamaAdapter.profile`). */
export interface KernelTime {
  /** kernel family / entry point, e.g. `matmul/rowwise` */
  label: string;
  /** the grid of each dispatch */
  workgroups: [number, number, number];
  /** how many dispatches of this kernel and grid the pass makes */
  dispatches: number;
  /** GPU milliseconds over all of them */
  ms: number;
}

export interface Generation extends AsyncIterableIterator<GeneratePiece> {
  /** Resolves to the whole result when the generation ends; rejects with its error. */
  readonly result: Promise<GenerateResult>;
  /** The whole text, once the generation ends. */
  text(): Promise<string>;
  return(value?: unknown): Promise<IteratorResult<GeneratePiece>>;
}

export class LlamaAdapter {
  private constructor();

  /** Every error code. */
  static readonly ERROR_CODES: readonly LlamaAdapterErrorCode[];

  /** Whether this browser can run the model, and on which GPU. Never throws. Starts (and ends) a short-lived worker. */
  static checkSupport(options?: { wasmUrl?: string | URL }): Promise<SupportReport>;

  /**
   * Loads a base + adapter in a new worker: fetches the manifests, checks that
   * the model fits the device (before any shard is fetched), then fetches
   * shards (3 at a time; from the cache when stored there), verifies their
   * sha256, stores them, and writes them to the GPU one at a time.
   * Rejects with a {@link LlamaAdapterError}.
   */
  static load(options: LoadOptions): Promise<LlamaAdapter>;

  /**
   * Checks a base + adapter without loading them: fetches the manifests and
   * runs every check `load` runs before its first shard (format, config,
   * adapter-for-this-base, fit on this device). Rejects with the error `load`
   * would give (`network`, `bad-format`, `wrong-base`, `does-not-fit`, ...).
   * Use it to vet a new model before disposing the one in use.
   */
  static check(options: { base: string | URL; adapter: string | URL; signal?: AbortSignal; wasmUrl?: string | URL }): Promise<{ fit: FitReport; totalBytes: number; files: number; baseManifestSha256: string; adapterManifestSha256: string }>;

  /** Deletes every model this origin stored. Resolves to whether there was a cache to delete. */
  static clearCache(): Promise<boolean>;

  readonly info: ModelInfo;
  /** The result of the last generation that ended; null before the first. */
  readonly lastResult: GenerateResult | null;
  /** dispose() was called, or the engine died (device lost, crash). */
  readonly disposed: boolean;

  /** Encodes a picture once (vision tower on the GPU); pass the result to generate({ image }). */
  encodeImage(source: ImageSource): Promise<LlamaAdapterImage>;

  /** Starts a generation. Nothing is thrown here: errors come from the iteration / `result`. */
  generate(options: GenerateOptions): Generation;

  /** Generates and resolves to the whole result. */
  complete(options: GenerateOptions): Promise<GenerateResult>;

  /**
   * Swaps the adapter, keeping the base on the GPU (no base file is fetched).
   * Encoded pictures stay valid. Waits for a running generation to end first.
   * On failure the previous adapter stays loaded.
   */
  setAdapter(adapter: string | URL, options?: SetAdapterOptions): Promise<ModelInfo>;

  /**
   * Bench: GPU time per kernel of one forward pass of `tokens` (default 1, a
   * decode step) from `position` (default 0), each dispatch timed alone,
   * `reps` (default 5) repetitions less a single one.
   */
  profile(options?: { tokens?: number; position?: number; reps?: number; image?: LlamaAdapterImage }): Promise<KernelTime[]>;

  /** wasm linear memory now (= its peak, it only grows) and the model's GPU bytes. */
  memoryUsage(): Promise<{ wasmMemoryBytes: number; gpuBytes: number | null }>;

  /** Frees the GPU memory and ends the worker. Pending calls reject with `disposed`. */
  dispose(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;

  /** Test hook: destroys the GPU device as a driver reset would; later calls reject with `device-lost`. */
  _destroyDeviceForTesting(): Promise<void>;
  /** Test hook: the engine panics as a bug would; this and later calls reject with `internal`; a new `load` works. */
  _panicForTesting(): Promise<void>;
}

export default LlamaAdapter;
