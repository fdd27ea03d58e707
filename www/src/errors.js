// Error codes and the one error class every failure of this module reaches
// the user as. Shared by the main thread (index.js) and the worker (worker.js):
// the worker turns whatever it caught into a plain payload (postMessage cannot
// carry an Error's own properties reliably), the main thread rebuilds it.

/** Every code a LlamaAdapterError can carry. */
export const ERROR_CODES = Object.freeze([
  'no-webgpu', // the browser offers no WebGPU (or no adapter)
  'does-not-fit', // the model needs more GPU memory / larger buffers than the device offers
  'integrity', // a downloaded file does not match its manifest (size or sha256)
  'aborted', // an AbortSignal stopped the operation
  'device-lost', // the GPU device was lost (driver reset, tab in background too long, ...)
  'bad-input', // an argument the engine cannot use (not an image, empty prompt, ...)
  'context-overflow', // prompt + maxNewTokens exceed the model's context
  'wrong-base', // the adapter was made for another base model
  'bad-format', // a manifest is not a llama-adapter-web manifest this version reads
  'busy', // a generation is already running on this model
  'internal', // a bug (a Rust panic traps the wasm); the worker is restarted on the next load
  'network', // a download failed (offline, server error, connection closed)
  'quota', // the browser refused to store the model (storage quota)
  'disposed', // the model was disposed
]);

const CODE_SET = new Set(ERROR_CODES);

/** What a person can do about each code; appended to the engine's message. */
const ADVICE = {
  'no-webgpu':
    'WebGPU is available in Chrome or Edge 113+ on Windows, macOS and ChromeOS; in Chrome on Linux or Android after ' +
    'enabling chrome://flags/#enable-unsafe-webgpu (or starting it with --enable-unsafe-webgpu); in Safari 26+; and in ' +
    'Firefox 141+ on Windows. It also needs a secure page (https:// or http://localhost) and hardware acceleration turned on ' +
    '(chrome://gpu shows whether WebGPU is blocked).',
  'does-not-fit':
    'Try a smaller or more strongly quantized model, close other GPU-heavy tabs, or use a device with more GPU memory.',
  integrity:
    'The file on the server does not match its manifest: the model was probably updated while it was downloading, or a ' +
    'proxy changed it. Reload the page to fetch it again; if this repeats, the model files on the server are inconsistent.',
  aborted: 'The operation was stopped on request; the model is still usable.',
  'device-lost':
    'Load the model again (no page reload needed). If this repeats, close other GPU-heavy tabs, update the GPU driver or ' +
    'restart the browser.',
  'context-overflow': 'Shorten the prompt or ask for fewer new tokens (maxNewTokens).',
  'wrong-base': 'Load this adapter together with the base model it was converted for.',
  'bad-format': 'Convert the model again with this version of llama-adapter (`llama-adapter convert`).',
  busy: 'Wait for the running generation to finish, or stop it with its AbortSignal, before starting another.',
  internal:
    'This is a bug in llama-adapter-web. The engine was stopped; loading the model again starts a fresh one. Please ' +
    'report it with the browser console log.',
  network: 'Check the connection and try again: files already downloaded are kept, so the retry continues where it stopped.',
  quota:
    'The browser has no room to store the model. Free some space (site data of other sites, or this site\'s old models with ' +
    'LlamaAdapter.clearCache()), or load with { cache: false }.',
  disposed: 'Load the model again with LlamaAdapter.load().',
};

export class LlamaAdapterError extends Error {
  /**
   * @param {string} code one of ERROR_CODES
   * @param {string} message
   * @param {{ cause?: unknown, details?: object }} [options]
   */
  constructor(code, message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'LlamaAdapterError';
    this.code = CODE_SET.has(code) ? code : 'internal';
    this.details = options.details ?? {};
    if (options.cause !== undefined && this.cause === undefined) this.cause = options.cause;
  }
}

/** The engine's message plus what to do about it (once). */
export function withAdvice(code, message) {
  const advice = ADVICE[code];
  const text = String(message ?? '').trim() || code;
  if (!advice || text.includes(advice.slice(0, 30))) return text;
  // The engine's own messages already say these.
  if (code === 'no-webgpu' && /Safari/.test(text)) return text;
  if (code === 'device-lost' && /load the model again/i.test(text)) return text;
  return `${text.replace(/[.\s]+$/, '')}. ${advice}`;
}

export function makeError(code, message, options) {
  return new LlamaAdapterError(code, withAdvice(code, message), options);
}

function isAbortError(e) {
  return e != null && typeof e === 'object' && (e.name === 'AbortError' || e.name === 'TimeoutError');
}

function isQuotaError(e) {
  return e != null && typeof e === 'object' && (e.name === 'QuotaExceededError' || e.code === 22);
}

/** Own enumerable data of an engine error other than code/message (e.g. needed vs offered bytes). */
function extraDetails(e) {
  const out = {};
  if (e == null || typeof e !== 'object') return out;
  for (const key of Object.keys(e)) {
    if (key === 'code' || key === 'message' || key === 'stack' || key === 'name' || key === 'cause') continue;
    const v = e[key];
    if (v == null || ['string', 'number', 'boolean'].includes(typeof v)) out[key] = v;
    else if (typeof v === 'bigint') out[key] = Number(v);
    else {
      try {
        out[key] = JSON.parse(JSON.stringify(v));
      } catch {
        /* not data */
      }
    }
  }
  return out;
}

/**
 * Classifies anything caught into { code, message, details, fatal }.
 * `fatal` means the worker (and the engine in it) must not be used again:
 * a wasm trap (a Rust panic) or a lost device.
 */
export function classify(e) {
  if (e instanceof LlamaAdapterError) {
    return { code: e.code, message: e.message, details: e.details, fatal: e.code === 'device-lost' || !!e.details?.fatal, name: e.name, stack: e.stack };
  }
  const wasmTrap = typeof WebAssembly !== 'undefined' && WebAssembly.RuntimeError && e instanceof WebAssembly.RuntimeError;
  if (wasmTrap) {
    return {
      code: 'internal',
      message: withAdvice('internal', `The engine crashed (wasm trap: ${e.message})`),
      details: { trap: true },
      fatal: true,
      name: 'RuntimeError',
      stack: e.stack,
    };
  }
  if (isAbortError(e)) return { code: 'aborted', message: withAdvice('aborted', 'Stopped'), details: {}, fatal: false };
  if (isQuotaError(e)) return { code: 'quota', message: withAdvice('quota', String(e.message || 'Storage quota exceeded')), details: {}, fatal: false };
  const code = e && typeof e === 'object' && typeof e.code === 'string' && CODE_SET.has(e.code) ? e.code : 'internal';
  const message = e && typeof e === 'object' && 'message' in e ? String(e.message) : String(e);
  return {
    code,
    message: withAdvice(code, message),
    details: extraDetails(e),
    fatal: code === 'device-lost',
    name: e?.name,
    stack: e?.stack,
  };
}

/** Worker side: an error as a structured-clone-safe payload. */
export function toPayload(e) {
  return classify(e);
}

/** Main-thread side: a payload back into a LlamaAdapterError. */
export function fromPayload(p) {
  const err = new LlamaAdapterError(p.code, p.message, { details: { ...(p.details ?? {}) } });
  if (p.stack) err.stack = `${err.name}: ${err.message}\n    (in the engine worker)\n${String(p.stack).split('\n').slice(1).join('\n')}`;
  return err;
}
