// The demo page: pick a picture, ask, watch the answer stream in. Plain ESM,
// no framework. Everything that touches the model goes through the public API
// of the module (./src/index.js); this file only drives the page.

const $ = (id) => document.getElementById(id);

const els = {
  gpuLine: $('gpu-line'),
  notice: $('notice'), noticeTitle: $('notice-title'), noticeText: $('notice-text'), noticeList: $('notice-list'),
  noticeDetails: $('notice-details'), noticeDetailText: $('notice-detail-text'), noticeAction: $('notice-action'), noticeDismiss: $('notice-dismiss'),
  modelDefault: $('model-default'), modelCustom: $('model-custom'), customUrls: $('custom-urls'), baseUrl: $('base-url'), adapterUrl: $('adapter-url'),
  loadButton: $('load-button'), loadCancel: $('load-cancel'), cacheHint: $('cache-hint'),
  progressBox: $('progress-box'), progressLabel: $('progress-label'), progress: $('load-progress'), progressDetail: $('progress-detail'),
  modelInfo: $('model-info'),
  dropZone: $('drop-zone'), preview: $('preview'), dropHint: $('drop-hint'), pickFile: $('pick-file'), cameraButton: $('camera-button'),
  clearPicture: $('clear-picture'), pictureName: $('picture-name'), fileInput: $('file-input'), cameraInput: $('camera-input'), examples: $('examples'),
  askForm: $('ask-form'), instruction: $('instruction'), inputText: $('input-text'), inputDetails: $('input-details'),
  maxTokens: $('max-tokens'), temperature: $('temperature'), topP: $('top-p'), seed: $('seed'), resetSettings: $('reset-settings'),
  askButton: $('ask-button'), stopButton: $('stop-button'),
  answer: $('answer'), status: $('status'), stats: $('stats'),
  storageSummary: $('storage-summary'), storageList: $('storage-list'), storageRefresh: $('storage-refresh'), storageDelete: $('storage-delete'), storagePersist: $('storage-persist'),
  cameraDialog: $('camera-dialog'), cameraVideo: $('camera-video'), cameraStatus: $('camera-status'), cameraSnap: $('camera-snap'), cameraClose: $('camera-close'),
  updateBanner: $('update-banner'), updateText: $('update-text'), updateReload: $('update-reload'), updateLater: $('update-later'),
};

const DEFAULTS = Object.freeze({ maxNewTokens: 64, temperature: 0.1, topP: 0.75, seed: 0 });
const DEFAULT_MODEL = Object.freeze({
  base: new URL('models/default/base/manifest.json', document.baseURI).href,
  adapter: new URL('models/default/adapter/manifest.json', document.baseURI).href,
});
const MODEL_CACHE_FALLBACK = 'llama-adapter-web-models-v1';
const SHELL_CACHE_PREFIX = 'llama-adapter-web-shell-';
const URLS_KEY = 'llama-adapter-web-demo:custom-urls';

const state = {
  api: null, // the module: { LlamaAdapter, LlamaAdapterError, CACHE_NAME }
  support: null,
  model: null,
  modelUrls: null, // { base, adapter } of the loaded model
  modelGeneration: 0, // bumps on every load / adapter swap (encoded pictures belong to one)
  loading: null, // { controller, promise }
  generating: null, // AbortController
  picture: null, // { blob, name, width, height, objectUrl, id }
  encoded: null, // { pictureId, modelGeneration, image }
  lastLoad: null, // { ms, fromCache, bytes }
  lastRun: null, // what the last generation measured (also read by tools/demo-headless.mjs)
  pictureSeq: 0,
};

// Read by scripts (tools/demo-headless.mjs, tests) to see what the page saw; never needed by people.
window.llamaDemo = {
  get state() {
    return {
      support: state.support,
      loaded: !!state.model,
      loading: !!state.loading,
      generating: !!state.generating,
      modelUrls: state.modelUrls,
      lastLoad: state.lastLoad,
      lastRun: state.lastRun,
      picture: state.picture ? { name: state.picture.name, width: state.picture.width, height: state.picture.height } : null,
      error: document.body.dataset.error || null,
    };
  },
  /** Test hook: simulate a GPU reset (the module's own test hook). */
  async loseDevice() {
    await state.model?._destroyDeviceForTesting?.();
  },
};

// ------------------------------------------------------------------ formatting

function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return '–';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  do {
    v /= 1000;
    i++;
  } while (v >= 1000 && i < units.length - 1);
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[i]}`;
}

function fmtSeconds(s) {
  if (!Number.isFinite(s) || s < 0) return '–';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function fmtRate(r) {
  return Number.isFinite(r) && r > 0 ? `${r >= 100 ? r.toFixed(0) : r.toFixed(1)} tokens/s` : '–';
}

function shortUrl(url) {
  try {
    const u = new URL(url);
    if (u.origin === location.origin) return u.pathname + u.search;
    return u.href;
  } catch {
    return String(url);
  }
}

function modelLabel(urls) {
  if (!urls) return '';
  if (urls.base === DEFAULT_MODEL.base && urls.adapter === DEFAULT_MODEL.adapter) return 'Demonstration model (shapes)';
  return `${shortUrl(urls.base)} + ${shortUrl(urls.adapter)}`;
}

function setStatus(text) {
  els.status.textContent = text;
}

function fillFacts(dl, rows) {
  dl.replaceChildren();
  for (const [term, value, key] of rows) {
    if (value == null || value === '') continue;
    const wrap = dl.classList.contains('stats') ? document.createElement('div') : null;
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    if (/^\/|^https?:/.test(value)) {
      // A path or URL: let it break after slashes.
      String(value).split('/').forEach((part, i) => {
        if (i) dd.append('/', document.createElement('wbr'));
        dd.append(part);
      });
    } else dd.textContent = value;
    if (key) dd.dataset.key = key;
    if (wrap) {
      wrap.append(dt, dd);
      dl.append(wrap);
    } else dl.append(dt, dd);
  }
  dl.hidden = dl.childElementCount === 0;
}

// --------------------------------------------------------------------- notices

const BROWSERS = [
  'Chrome or Edge 113 or newer on Windows, macOS and ChromeOS',
  'Chrome 121 or newer on Android (recent devices)',
  'Chrome on Linux: turn on chrome://flags/#enable-unsafe-webgpu (and chrome://flags/#enable-vulkan), then restart it',
  'Safari 26 or newer on macOS, iOS and iPadOS (older Safari: Develop → Feature Flags → WebGPU)',
  'Firefox 141 or newer on Windows (elsewhere: Firefox Nightly, or dom.webgpu.enabled in about:config)',
];

function explain(error, context) {
  const code = error?.code ?? 'internal';
  const message = String(error?.message ?? error ?? 'Unknown error');
  const details = error?.details ?? {};
  switch (code) {
    case 'no-webgpu':
      if (details.supportCode === 'engine') {
        return {
          title: 'The engine did not start',
          text: `The page's engine files did not load (${message}). Reload the page; if this repeats, the site's files are incomplete or being updated.`,
          kind: 'error',
        };
      }
      if (typeof navigator !== 'undefined' && navigator.gpu && context === 'start') {
        // The browser has the API but gave the engine no GPU (blocklisted, hardware acceleration
        // off) or the engine itself did not start: the browser list would not help here.
        return {
          title: 'WebGPU did not start',
          text: 'This browser has WebGPU, but the engine could not get a GPU from it. These usually help:',
          list: [
            'Turn on hardware acceleration in the browser’s settings, then restart it',
            'Update the browser and the GPU driver',
            'In Chrome or Edge, chrome://gpu shows whether WebGPU is blocked on this machine (chrome://flags/#enable-unsafe-webgpu overrides the block)',
            'Reload the page (if the engine files were being updated)',
          ],
          kind: 'info',
        };
      }
      return {
        title: 'This browser does not offer WebGPU',
        text: 'The model runs on your own GPU through WebGPU, and this browser (or its settings) does not provide it. These browsers do:',
        list: BROWSERS,
        tail: 'Hardware acceleration must be on, and the page must be served over https:// or from localhost.',
        kind: 'info',
      };
    case 'does-not-fit': {
      const ctx = state.model ? '' : ' Nothing was downloaded.';
      return {
        title: 'This model does not fit on this GPU',
        text: `The model needs more GPU memory (or larger GPU buffers) than this device offers.${ctx} Try a smaller or more strongly quantised model, close other tabs that use the GPU, or use a computer with a bigger GPU.`,
      };
    }
    case 'device-lost':
      return {
        title: 'The GPU connection was lost',
        text: 'The browser reset the GPU (a driver update or crash, too little memory, or the tab was in the background for long). The page is fine: load the model again — it comes from the cache, so it is quick.',
        action: { label: 'Reload model', run: () => reloadModel() },
      };
    case 'bad-input':
      if (context === 'picture') {
        return {
          title: 'That file is not a picture',
          text: 'It could not be read as an image. Use a PNG, JPEG, WebP or GIF picture, for example one of the examples below.',
        };
      }
      return { title: 'The request could not be used', text: message };
    case 'context-overflow': {
      const ctxLen = state.model?.info?.config?.llama?.max_seq_len;
      return {
        title: 'The prompt is too long',
        text: `The instruction, the input paragraph, the picture and the answer must fit into the model’s context${ctxLen ? ` of ${ctxLen} tokens` : ''}. Shorten the text, or lower “Max new tokens” in the settings.`,
      };
    }
    case 'network':
      return {
        title: navigator.onLine === false ? 'You are offline' : 'A download failed',
        text:
          navigator.onLine === false
            ? 'This model is not in the browser’s cache yet, so it needs the network once. Connect and try again.'
            : 'A model file could not be downloaded. Check the connection (and the URLs, for your own model) and try again; files already downloaded are kept.',
        action: context === 'load' ? { label: 'Try again', run: () => loadModel() } : null,
      };
    case 'integrity':
      return {
        title: 'A download was damaged',
        text: 'A model file did not match its manifest (it may have changed on the server during the download). Try again; if it repeats, the model files on the server do not belong together.',
        action: context === 'load' ? { label: 'Try again', run: () => loadModel() } : null,
      };
    case 'quota':
      return {
        title: 'Not enough storage space',
        text: 'The browser would not store the model. Free some space — delete downloaded models below, or other sites’ data — and try again.',
        action: { label: 'Show storage', run: () => { els.storageRefresh.focus(); els.storageRefresh.scrollIntoView({ block: 'center' }); refreshStorage(); } },
      };
    case 'wrong-base':
      return {
        title: 'This adapter belongs to another base model',
        text: 'An adapter only works with the base model it was made for. Enter the base manifest URL that goes with it.',
      };
    case 'bad-format':
      return {
        title: 'That is not a model this page can read',
        text: 'The URL does not point to a llama-adapter-web manifest.json of a supported version. Convert the model with llama-adapter convert.',
      };
    case 'busy':
      return { title: 'Still busy', text: 'Wait for the running answer to finish, or stop it first.', kind: 'info' };
    case 'disposed':
      return { title: 'The model was unloaded', text: 'Load the model again.', action: { label: 'Load model', run: () => loadModel() } };
    default:
      return {
        title: 'Something went wrong',
        text: 'The engine stopped unexpectedly. Loading the model again starts a fresh one.',
        action: { label: 'Reload model', run: () => reloadModel() },
      };
  }
}

let noticeAction = null;

function showError(error, context) {
  const info = explain(error, context);
  const code = error?.code ?? 'internal';
  document.body.dataset.error = code;
  els.notice.dataset.code = code;
  els.notice.classList.toggle('info', info.kind === 'info');
  els.noticeTitle.textContent = info.title;
  els.noticeText.textContent = info.text;
  els.noticeList.replaceChildren();
  for (const item of info.list ?? []) {
    const li = document.createElement('li');
    li.textContent = item;
    els.noticeList.append(li);
  }
  if (info.tail) {
    const li = document.createElement('li');
    li.className = 'muted';
    li.textContent = info.tail;
    els.noticeList.append(li);
  }
  els.noticeList.hidden = !info.list;
  const detail = String(error?.message ?? error ?? '');
  els.noticeDetailText.textContent = `${code}: ${detail}`;
  els.noticeDetails.hidden = !detail || detail === info.text;
  noticeAction = info.action ?? null;
  els.noticeAction.hidden = !noticeAction;
  els.noticeAction.textContent = noticeAction?.label ?? '';
  els.notice.hidden = false;
  console.warn(`[demo] ${context ?? ''} ${code}:`, error);
}

function clearNotice() {
  els.notice.hidden = true;
  delete document.body.dataset.error;
  noticeAction = null;
}

els.noticeDismiss.addEventListener('click', () => {
  clearNotice();
  els.instruction.focus();
});
els.noticeAction.addEventListener('click', () => {
  const action = noticeAction;
  clearNotice();
  action?.run();
});

// ------------------------------------------------------------------ the model

function selectedUrls() {
  if (els.modelDefault.checked) return { ...DEFAULT_MODEL };
  const base = els.baseUrl.value.trim();
  const adapter = els.adapterUrl.value.trim();
  if (!base || !adapter) return null;
  try {
    return { base: new URL(base, document.baseURI).href, adapter: new URL(adapter, document.baseURI).href };
  } catch {
    return null;
  }
}

function updateModelPicker() {
  els.customUrls.hidden = !els.modelCustom.checked;
  const urls = selectedUrls();
  const loaded = state.model && !state.model.disposed && urls && state.modelUrls;
  if (state.loading) return;
  if (loaded && urls.base === state.modelUrls.base && urls.adapter === state.modelUrls.adapter) {
    els.loadButton.textContent = 'Loaded';
    els.loadButton.disabled = true;
  } else if (loaded && urls.base === state.modelUrls.base) {
    els.loadButton.textContent = 'Swap adapter';
    els.loadButton.disabled = false;
  } else {
    els.loadButton.textContent = 'Load model';
    els.loadButton.disabled = !urls || state.support?.webgpu === false;
  }
  updateCacheHint(urls);
}

let cacheHintSeq = 0;
async function updateCacheHint(urls) {
  const seq = ++cacheHintSeq;
  let text = '';
  if (urls && !(state.model && state.modelUrls?.base === urls.base && state.modelUrls?.adapter === urls.adapter)) {
    try {
      // caches.has first: caches.open would create an empty cache just by looking.
      const cache = typeof caches !== 'undefined' && (await caches.has(modelCacheName())) ? await caches.open(modelCacheName()) : null;
      const [b, a] = cache ? await Promise.all([cache.match(urls.base), cache.match(urls.adapter)]) : [];
      if (b && a) text = 'In this browser’s cache: loads without the network.';
      else if (urls.base === DEFAULT_MODEL.base && urls.adapter === DEFAULT_MODEL.adapter) text = '18 MB download, then cached.';
    } catch {
      /* the hint is optional */
    }
  }
  if (seq === cacheHintSeq) els.cacheHint.textContent = text;
}

function modelCacheName() {
  return state.api?.CACHE_NAME ?? MODEL_CACHE_FALLBACK;
}

const PHASES = {
  download: 'Downloading',
  cache: 'Reading from the cache',
  verify: 'Checking',
  upload: 'Uploading to the GPU',
  compile: 'Preparing the GPU kernels',
  ready: 'Ready',
};

function progressTracker() {
  const samples = []; // [time ms, bytes]
  let lastPhase = null;
  return (ev) => {
    const now = performance.now();
    const { phase, loadedBytes = 0, totalBytes = 0, shard, fromCache } = ev ?? {};
    if (phase !== lastPhase) {
      lastPhase = phase;
      setStatus(`${PHASES[phase] ?? phase}…`);
    }
    els.progressLabel.textContent = PHASES[phase] ?? String(phase);
    const doneBytes = phase === 'compile' || phase === 'ready';
    if (phase === 'compile') els.progress.removeAttribute('value');
    else if (totalBytes > 0) els.progress.value = doneBytes ? 1 : loadedBytes / totalBytes;
    if (phase === 'ready') els.progress.value = 1;
    samples.push([now, loadedBytes]);
    while (samples.length > 2 && now - samples[0][0] > 4000) samples.shift();
    const parts = [];
    if (totalBytes > 0 && !doneBytes) parts.push(`${fmtBytes(loadedBytes)} of ${fmtBytes(totalBytes)}`);
    if (shard) parts.push(`${shard.package}/${shard.file}`);
    if (fromCache && shard) parts.push('from the cache');
    if (!doneBytes && totalBytes > loadedBytes && samples.length >= 2) {
      const [t0, b0] = samples[0];
      const rate = (loadedBytes - b0) / ((now - t0) / 1000);
      const left = (totalBytes - loadedBytes) / rate;
      if (rate > 0 && now - t0 > 300) parts.push(left < 1 ? 'less than a second left' : `about ${fmtSeconds(left)} left`);
    }
    if (phase === 'compile') parts.push('a few seconds');
    els.progressDetail.textContent = parts.join(' · ');
  };
}

function setLoadingUi(on) {
  els.loadCancel.hidden = !on;
  els.loadButton.disabled = on;
  els.modelDefault.disabled = on;
  els.modelCustom.disabled = on;
  els.baseUrl.disabled = on;
  els.adapterUrl.disabled = on;
  document.body.dataset.loading = on ? 'true' : 'false';
  if (on) {
    els.loadButton.textContent = 'Loading…';
    els.progressBox.hidden = false;
    els.progress.value = 0;
    els.progressLabel.textContent = 'Starting…';
    els.progressDetail.textContent = '';
  }
}

/** Loads the selected model (or swaps the adapter). Resolves to whether a model is ready. */
function loadModel() {
  if (state.loading) return state.loading.promise;
  const urls = selectedUrls();
  if (!urls) {
    showError({ code: 'bad-input', message: 'Enter both the base and the adapter manifest URL.' }, 'urls');
    (els.baseUrl.value.trim() ? els.adapterUrl : els.baseUrl).focus();
    return Promise.resolve(false);
  }
  if (!state.api) return Promise.resolve(false);
  const controller = new AbortController();
  const run = async () => {
    clearNotice();
    setLoadingUi(true);
    const onProgress = progressTracker();
    const started = performance.now();
    const swap = state.model && !state.model.disposed && state.modelUrls?.base === urls.base;
    try {
      if (swap) {
        if (state.modelUrls.adapter !== urls.adapter) {
          // Encoded pictures stay valid across an adapter swap (index.d.ts), so no re-encode.
          await state.model.setAdapter(urls.adapter, { onProgress, signal: controller.signal });
          state.modelUrls = { ...urls };
        }
      } else {
        const old = state.model;
        if (old && !old.disposed && state.api.LlamaAdapter.check) {
          // Vet the new model (manifests, base, fit) before giving up the one in use:
          // a wrong URL must not leave the page without a model.
          els.progressLabel.textContent = 'Checking the model…';
          await state.api.LlamaAdapter.check({ base: urls.base, adapter: urls.adapter, signal: controller.signal });
        }
        state.model = null;
        state.modelUrls = null;
        releaseEncoded();
        if (old) await old.dispose();
        const model = await state.api.LlamaAdapter.load({ base: urls.base, adapter: urls.adapter, onProgress, signal: controller.signal, cache: true });
        state.model = model;
        state.modelUrls = { ...urls };
        state.modelGeneration++;
      }
      const info = state.model.info;
      state.lastLoad = {
        ms: performance.now() - started,
        fromCache: !!info?.fromCache,
        bytes: info?.bytes?.total ?? null,
        swap: !!swap,
      };
      els.progressLabel.textContent = 'Ready';
      els.progress.value = 1;
      els.progressDetail.textContent = `${swap ? 'Adapter swapped' : 'Loaded'} in ${fmtSeconds(state.lastLoad.ms / 1000)}${info?.fromCache ? ', from the cache' : ''}.`;
      setStatus(`Model ready${info?.fromCache ? ' (from the cache)' : ''}.`);
      renderModelInfo();
      document.body.dataset.model = 'ready';
      // Encode the chosen picture ahead of the question.
      if (state.picture) getEncodedImage().catch((e) => showError(e, 'picture'));
      refreshStorage();
      return true;
    } catch (e) {
      if (e?.code === 'aborted' || controller.signal.aborted) {
        setStatus('Loading cancelled.');
        els.progressBox.hidden = true;
      } else {
        els.progressBox.hidden = true;
        setStatus('');
        showError(e, 'load');
      }
      if (!state.model || state.model.disposed) document.body.dataset.model = 'none';
      renderModelInfo();
      return false;
    } finally {
      state.loading = null;
      setLoadingUi(false);
      updateModelPicker();
    }
  };
  const promise = run();
  state.loading = { controller, promise };
  return promise;
}

async function reloadModel() {
  const old = state.model;
  state.model = null;
  state.modelUrls = null;
  releaseEncoded();
  if (old) {
    try {
      await old.dispose();
    } catch {
      /* it is gone either way */
    }
  }
  renderModelInfo();
  return loadModel();
}

function renderModelInfo() {
  const model = state.model;
  if (!model || model.disposed) {
    fillFacts(els.modelInfo, []);
    return;
  }
  const info = model.info ?? {};
  const gpu = info.gpu ?? state.support?.adapter ?? null;
  const llama = info.config?.llama;
  fillFacts(els.modelInfo, [
    ['GPU', gpuName(gpu), 'gpu'],
    ['Model', modelLabel(state.modelUrls), 'model'],
    ['Base', shortUrl(info.base?.url ?? state.modelUrls?.base), 'base'],
    ['Adapter', shortUrl(info.adapter?.url ?? state.modelUrls?.adapter), 'adapter'],
    ['Size', llama ? `${fmtBytes(info.bytes?.total)} · ${llama.n_layers} layers, dim ${llama.dim}, context ${llama.max_seq_len}` : fmtBytes(info.bytes?.total), 'size'],
    ['Came from', info.fromCache ? 'the cache (no download)' : info.bytes?.fromCache ? `network ${fmtBytes(info.bytes.fromNetwork)}, cache ${fmtBytes(info.bytes.fromCache)}` : 'the network', 'from-cache'],
    ['Loaded in', state.lastLoad ? fmtSeconds(state.lastLoad.ms / 1000) : null, 'load-time'],
    ['Cache', info.cacheError ? `not cached: ${info.cacheError}` : null, 'cache-error'],
  ]);
}

function gpuName(a) {
  if (!a) return '';
  const cpu = a.deviceType === 'Cpu';
  const name = a.name && a.name.trim() ? a.name.trim() : cpu ? 'Software adapter' : 'Unnamed adapter';
  const kinds = { Cpu: 'runs on the CPU', DiscreteGpu: 'discrete GPU', IntegratedGpu: 'integrated GPU', VirtualGpu: 'virtual GPU' };
  const bits = [kinds[a.deviceType] ?? null, a.shaderF16 ? 'f16 shaders' : null].filter(Boolean);
  return bits.length ? `${name} (${bits.join(', ')})` : name;
}

els.loadButton.addEventListener('click', () => loadModel());
els.loadCancel.addEventListener('click', () => state.loading?.controller.abort());
for (const el of [els.modelDefault, els.modelCustom]) el.addEventListener('change', updateModelPicker);
for (const el of [els.baseUrl, els.adapterUrl]) {
  el.addEventListener('input', () => {
    updateModelPicker();
    try {
      localStorage.setItem(URLS_KEY, JSON.stringify({ base: els.baseUrl.value, adapter: els.adapterUrl.value }));
    } catch {
      /* private mode */
    }
  });
}
try {
  const saved = JSON.parse(localStorage.getItem(URLS_KEY) ?? 'null');
  if (saved) {
    els.baseUrl.value = saved.base ?? '';
    els.adapterUrl.value = saved.adapter ?? '';
  }
} catch {
  /* nothing saved */
}

// -------------------------------------------------------------------- pictures

function releaseEncoded() {
  const enc = state.encoded;
  state.encoded = null;
  try {
    enc?.image?.release?.();
  } catch {
    /* already gone */
  }
}

async function getEncodedImage() {
  const pic = state.picture;
  const model = state.model;
  if (!pic || !model) return undefined;
  const enc = state.encoded;
  if (enc && enc.pictureId === pic.id && enc.modelGeneration === state.modelGeneration && enc.model === model) return enc.promise;
  releaseEncoded();
  const promise = model.encodeImage(pic.blob);
  const entry = { pictureId: pic.id, modelGeneration: state.modelGeneration, model, promise, image: null };
  state.encoded = entry;
  try {
    entry.image = await promise;
    if (state.encoded !== entry) entry.image.release?.();
    return entry.image;
  } catch (e) {
    if (state.encoded === entry) state.encoded = null;
    throw e;
  }
}

async function decodable(blob) {
  if (typeof createImageBitmap !== 'function') return { width: null, height: null };
  const bitmap = await createImageBitmap(blob);
  const size = { width: bitmap.width, height: bitmap.height };
  bitmap.close?.();
  return size;
}

/** Takes a picture from any route (file, drop, paste, camera, example). */
async function setPicture(blob, name, { example = null } = {}) {
  if (!blob) return;
  clearNotice();
  let size;
  try {
    if (blob.type && !blob.type.startsWith('image/')) throw new Error(`type ${blob.type}`);
    if (blob.size === 0) throw new Error('empty file');
    size = await decodable(blob);
  } catch (e) {
    showError({ code: 'bad-input', message: `“${name}” is not an image the browser can read (${e?.message ?? e})` }, 'picture');
    els.pictureName.textContent = '';
    return;
  }
  if (state.picture?.objectUrl) URL.revokeObjectURL(state.picture.objectUrl);
  releaseEncoded();
  const objectUrl = URL.createObjectURL(blob);
  state.picture = { blob, name, width: size.width, height: size.height, objectUrl, id: ++state.pictureSeq };
  els.preview.src = objectUrl;
  els.preview.alt = `The chosen picture: ${name}`;
  els.preview.hidden = false;
  els.dropZone.classList.add('has-picture');
  els.dropHint.textContent = 'Drop, paste or choose another picture to replace it:';
  els.clearPicture.hidden = false;
  els.pictureName.textContent = size.width ? `${name} · ${size.width}×${size.height}` : name;
  for (const b of els.examples.querySelectorAll('.example')) b.setAttribute('aria-pressed', String(b.dataset.src === example));
  document.body.dataset.picture = 'set';
  if (state.model) {
    getEncodedImage().catch((e) => {
      if (state.picture?.blob === blob) showError(e, 'picture');
    });
  }
}

function clearPicture() {
  if (state.picture?.objectUrl) URL.revokeObjectURL(state.picture.objectUrl);
  state.picture = null;
  releaseEncoded();
  els.preview.hidden = true;
  els.preview.removeAttribute('src');
  els.dropZone.classList.remove('has-picture');
  els.dropHint.textContent = 'Drop a picture here, paste one (Ctrl+V), or';
  els.clearPicture.hidden = true;
  els.pictureName.textContent = 'No picture: the model answers from the text alone.';
  for (const b of els.examples.querySelectorAll('.example')) b.setAttribute('aria-pressed', 'false');
  document.body.dataset.picture = 'none';
}

els.pickFile.addEventListener('click', () => els.fileInput.click());
els.fileInput.addEventListener('change', () => {
  const f = els.fileInput.files?.[0];
  if (f) setPicture(f, f.name);
  els.fileInput.value = '';
});
els.cameraInput.addEventListener('change', () => {
  const f = els.cameraInput.files?.[0];
  if (f) setPicture(f, f.name || 'Camera picture');
  els.cameraInput.value = '';
});
els.clearPicture.addEventListener('click', () => {
  clearPicture();
  els.pickFile.focus();
});

for (const button of els.examples.querySelectorAll('.example')) {
  button.setAttribute('aria-pressed', 'false');
  button.addEventListener('click', async () => {
    const src = button.dataset.src;
    try {
      const response = await fetch(src);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blob = await response.blob();
      await setPicture(blob, src.split('/').pop(), { example: src });
    } catch (e) {
      showError({ code: 'network', message: `Could not read the example picture ${src}: ${e?.message ?? e}` }, 'example');
    }
  });
}

// Drag and drop: anywhere on the page, highlighted on the drop zone.
let dragDepth = 0;
function hasFiles(e) {
  return [...(e.dataTransfer?.types ?? [])].includes('Files');
}
document.addEventListener('dragenter', (e) => {
  if (!hasFiles(e)) return;
  dragDepth++;
  els.dropZone.classList.add('dragging');
});
document.addEventListener('dragleave', (e) => {
  if (!hasFiles(e)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) els.dropZone.classList.remove('dragging');
});
document.addEventListener('dragover', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
});
document.addEventListener('drop', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth = 0;
  els.dropZone.classList.remove('dragging');
  const f = e.dataTransfer.files?.[0];
  if (f) setPicture(f, f.name || 'Dropped picture');
});

// Paste: a picture on the clipboard becomes the picture; text pastes as usual.
document.addEventListener('paste', (e) => {
  const items = [...(e.clipboardData?.items ?? [])];
  const item = items.find((i) => i.kind === 'file' && i.type.startsWith('image/'));
  if (!item) return;
  e.preventDefault();
  const f = item.getAsFile();
  if (f) setPicture(f, f.name && f.name !== 'image.png' ? f.name : 'Pasted picture');
});

// Camera: live preview where getUserMedia exists (desktop), the system camera
// (<input capture>) on touch devices and as the fallback.
let cameraStream = null;
function stopCamera() {
  for (const t of cameraStream?.getTracks() ?? []) t.stop();
  cameraStream = null;
  els.cameraVideo.srcObject = null;
}
els.cameraButton.addEventListener('click', async () => {
  const coarse = matchMedia('(pointer: coarse)').matches;
  if (coarse || !navigator.mediaDevices?.getUserMedia || typeof els.cameraDialog.showModal !== 'function') {
    els.cameraInput.click();
    return;
  }
  els.cameraStatus.textContent = 'Asking for the camera…';
  els.cameraSnap.disabled = true;
  els.cameraDialog.showModal();
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
    if (!els.cameraDialog.open) {
      stopCamera();
      return;
    }
    els.cameraVideo.srcObject = cameraStream;
    els.cameraStatus.textContent = '';
    els.cameraSnap.disabled = false;
    els.cameraSnap.focus();
  } catch (e) {
    els.cameraStatus.textContent = `No camera available (${e?.name ?? e}). Use “Choose a file…” instead, or allow the camera in the browser’s site settings.`;
  }
});
els.cameraSnap.addEventListener('click', () => {
  const v = els.cameraVideo;
  if (!v.videoWidth) return;
  const canvas = document.createElement('canvas');
  canvas.width = v.videoWidth;
  canvas.height = v.videoHeight;
  canvas.getContext('2d').drawImage(v, 0, 0);
  canvas.toBlob((blob) => {
    if (blob) setPicture(blob, 'Camera picture');
    els.cameraDialog.close();
  }, 'image/png');
});
els.cameraClose.addEventListener('click', () => els.cameraDialog.close());
els.cameraDialog.addEventListener('close', () => {
  stopCamera();
  els.cameraButton.focus();
});

// -------------------------------------------------------------------- asking

function readSettings() {
  const num = (el, fallback, { min, max, int }) => {
    let v = Number(el.value);
    if (el.value.trim() === '' || !Number.isFinite(v)) v = fallback;
    if (int) v = Math.round(v);
    v = Math.min(max, Math.max(min, v));
    el.value = String(v);
    return v;
  };
  return {
    maxNewTokens: num(els.maxTokens, DEFAULTS.maxNewTokens, { min: 1, max: 4096, int: true }),
    temperature: num(els.temperature, DEFAULTS.temperature, { min: 0, max: 2 }),
    topP: num(els.topP, DEFAULTS.topP, { min: 0, max: 1 }),
    seed: num(els.seed, DEFAULTS.seed, { min: 0, max: 2 ** 32 - 1, int: true }),
  };
}

function resetSettings() {
  // The official default is 256 new tokens; the built-in model's answers are short, so 64 there.
  els.maxTokens.value = String(els.modelDefault.checked ? DEFAULTS.maxNewTokens : 256);
  els.temperature.value = String(DEFAULTS.temperature);
  els.topP.value = String(DEFAULTS.topP);
  els.seed.value = String(DEFAULTS.seed);
}

function setGeneratingUi(on) {
  els.askButton.disabled = on;
  els.stopButton.disabled = !on;
  els.answer.setAttribute('aria-busy', on ? 'true' : 'false');
  els.answer.classList.toggle('streaming', on);
  document.body.dataset.generating = on ? 'true' : 'false';
}

async function ask() {
  if (state.generating) return;
  const prompt = els.instruction.value.trim();
  if (!prompt) {
    setStatus('Type an instruction first.');
    els.instruction.focus();
    return;
  }
  if (state.support && !state.support.webgpu) {
    showError({ code: 'no-webgpu', message: state.support.reason }, 'ask');
    return;
  }
  const settings = readSettings();
  const input = els.inputText.value.trim();
  const controller = new AbortController();
  state.generating = controller;
  setGeneratingUi(true);
  clearNotice();
  const answerText = document.createTextNode('');
  els.answer.replaceChildren(answerText);
  document.body.dataset.answer = 'pending';
  fillFacts(els.stats, []);
  const clicked = performance.now();
  let firstAt = null;
  let pieces = 0;
  let text = '';
  let stopped = false;
  let result = null;
  try {
    if (!state.model || state.model.disposed) {
      if (state.model?.disposed) {
        state.model = null;
        state.modelUrls = null;
      }
      setStatus('Loading the model first…');
      const ok = await loadModel();
      if (!ok || !state.model) throw Object.assign(new Error('no model'), { code: 'silent' });
    }
    if (controller.signal.aborted) throw Object.assign(new Error('Stopped'), { code: 'aborted' });
    let image;
    if (state.picture) {
      setStatus('Looking at the picture…');
      image = await getEncodedImage();
    }
    if (controller.signal.aborted) throw Object.assign(new Error('Stopped'), { code: 'aborted' });
    setStatus('Thinking…');
    const started = performance.now();
    const generation = state.model.generate({ prompt, input: input || undefined, image, ...settings, signal: controller.signal });
    for await (const piece of generation) {
      if (firstAt === null) {
        firstAt = performance.now();
        setStatus('Answering…');
      }
      pieces++;
      text += piece.text;
      answerText.data = text;
    }
    result = state.model.lastResult;
    finishRun({ started, clicked, firstAt, pieces, text, result, stopped: false, settings });
    setStatus(result?.stoppedAtEos === false ? `Done (reached the limit of ${settings.maxNewTokens} new tokens).` : 'Done.');
  } catch (e) {
    if (e?.code === 'silent') {
      els.answer.replaceChildren(placeholder());
      setStatus('');
    } else if (e?.code === 'aborted' || controller.signal.aborted) {
      stopped = true;
      result = e?.details?.partial ?? null;
      if (!text) answerText.data = '';
      const mark = document.createElement('span');
      mark.className = 'stopped-mark';
      mark.textContent = text ? ' — stopped' : 'Stopped before the first word.';
      els.answer.append(mark);
      finishRun({ started: clicked, clicked, firstAt, pieces, text, result, stopped: true, settings });
      setStatus('Stopped.');
    } else {
      if (!text) els.answer.replaceChildren(placeholder());
      setStatus('');
      showError(e, e?.code === 'bad-input' && state.picture && /image|picture|png|jpeg|decode/i.test(String(e?.message)) ? 'picture' : 'generate');
      if (e?.code === 'device-lost' || e?.code === 'internal') {
        state.model = null;
        state.modelUrls = null;
        els.progressBox.hidden = true;
        document.body.dataset.model = 'none';
        renderModelInfo();
        updateModelPicker();
      }
    }
  } finally {
    state.generating = null;
    setGeneratingUi(false);
    document.body.dataset.answer = stopped ? 'stopped' : text ? 'done' : 'empty';
  }
}

function placeholder() {
  const span = document.createElement('span');
  span.className = 'placeholder';
  span.textContent = 'The answer appears here, word by word.';
  return span;
}

function finishRun({ clicked, firstAt, pieces, text, result, stopped, settings }) {
  const end = performance.now();
  const t = result?.timings ?? {};
  const decodeTps = t.decodeTokensPerS ?? (firstAt && pieces > 1 ? (pieces - 1) / ((end - firstAt) / 1000) : null);
  state.lastRun = {
    text,
    pieces,
    stopped,
    stoppedAtEos: result?.stoppedAtEos ?? null,
    promptTokens: result?.promptIds?.length ?? null,
    generatedTokens: result?.generatedIds?.length ?? pieces,
    timeToFirstTokenMs: firstAt ? firstAt - clicked : null,
    totalMs: end - clicked,
    prefillMs: t.prefillMs ?? null,
    decodeMs: t.decodeMs ?? null,
    prefillTokensPerS: t.prefillTokensPerS ?? null,
    decodeTokensPerS: decodeTps,
    settings,
    gpu: gpuName(state.model?.info?.gpu ?? state.support?.adapter),
  };
  const r = state.lastRun;
  fillFacts(els.stats, [
    ['Speed', fmtRate(r.decodeTokensPerS), 'decode-tps'],
    ['First token', r.timeToFirstTokenMs != null ? fmtSeconds(r.timeToFirstTokenMs / 1000) : null, 'ttft'],
    ['New tokens', r.generatedTokens != null ? String(r.generatedTokens) : null, 'tokens'],
    ['Prompt', r.promptTokens != null ? `${r.promptTokens} tokens` : null, 'prompt-tokens'],
    ['Prompt speed', fmtRate(r.prefillTokensPerS), 'prefill-tps'],
    ['Model from', state.lastLoad ? (state.lastLoad.fromCache ? 'the cache' : 'the network') : null, 'from-cache'],
  ]);
}

els.askForm.addEventListener('submit', (e) => {
  e.preventDefault();
  ask();
});
els.instruction.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ask();
  }
});
els.stopButton.addEventListener('click', () => {
  state.generating?.abort();
  els.askButton.focus();
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.generating && !els.cameraDialog.open) state.generating.abort();
});
for (const chip of document.querySelectorAll('.suggestions .chip')) {
  chip.addEventListener('click', () => {
    els.instruction.value = chip.textContent.trim();
    els.instruction.focus();
  });
}
els.resetSettings.addEventListener('click', resetSettings);

// -------------------------------------------------------------------- storage

async function entrySize(cache, request) {
  const res = await cache.match(request);
  if (!res) return 0;
  const len = Number(res.headers.get('content-length'));
  if (Number.isFinite(len) && len > 0) return len;
  return (await res.blob()).size;
}

let storageSeq = 0;
async function refreshStorage() {
  const seq = ++storageSeq;
  if (typeof caches === 'undefined') {
    els.storageSummary.textContent = 'This browser keeps no offline storage for this page (the Cache API needs https:// or localhost).';
    els.storageDelete.disabled = true;
    return;
  }
  const rows = [];
  let modelBytes = 0;
  let modelFiles = 0;
  let shellBytes = 0;
  let shellFiles = 0;
  try {
    // The service worker's own bookkeeping (llama-adapter-web-meta) is not shown.
    const names = (await caches.keys()).filter((n) => n.startsWith('llama-adapter-web') && n !== 'llama-adapter-web-meta' && !n.endsWith('-partial'));
    for (const name of names) {
      const cache = await caches.open(name);
      const keys = await cache.keys();
      const files = [];
      for (const req of keys) files.push({ url: req.url, bytes: await entrySize(cache, req) });
      const total = files.reduce((s, f) => s + f.bytes, 0);
      if (files.length === 0) continue;
      if (name === modelCacheName()) {
        modelBytes += total;
        modelFiles += files.length;
        rows.push({ title: 'Downloaded models', name, total, files });
      } else if (name.startsWith(SHELL_CACHE_PREFIX)) {
        shellBytes += total;
        shellFiles += files.length;
        rows.push({ title: 'This page, for offline use', name, total, files, collapsed: true });
      } else {
        rows.push({ title: name, name, total, files, collapsed: true });
      }
    }
  } catch (e) {
    els.storageSummary.textContent = `Could not read the storage: ${e?.message ?? e}`;
    return;
  }
  let estimate = null;
  try {
    estimate = navigator.storage?.estimate ? await navigator.storage.estimate() : null;
  } catch {
    estimate = null;
  }
  if (seq !== storageSeq) return;
  const rank = (r) => (r.name === modelCacheName() ? 0 : r.name.startsWith(SHELL_CACHE_PREFIX) ? 1 : 2);
  rows.sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  els.storageList.replaceChildren();
  for (const row of rows) {
    const li = document.createElement('li');
    li.dataset.cache = row.name;
    const head = document.createElement('div');
    head.className = 'cache-name';
    head.textContent = `${row.title}: ${fmtBytes(row.total)} in ${row.files.length} ${row.files.length === 1 ? 'file' : 'files'}`;
    li.append(head);
    const list = document.createElement('ul');
    for (const f of row.files.sort((a, b) => a.url.localeCompare(b.url))) {
      const item = document.createElement('li');
      const n = document.createElement('span');
      // Break long paths after a slash, not inside a name.
      const shown = shortUrl(f.url).replace(/[?&]sha256=[0-9a-f]{8}[0-9a-f]*$/i, '');
      n.title = shown;
      const parts = (row.name === modelCacheName() ? shown.replace(/^\/models\//, '') : shown).split('/');
      parts.forEach((part, i) => {
        if (i) n.append('/', document.createElement('wbr'));
        n.append(part);
      });
      const s = document.createElement('span');
      s.textContent = fmtBytes(f.bytes);
      item.append(n, s);
      list.append(item);
    }
    if (row.collapsed && row.files.length) {
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      summary.className = 'small muted';
      summary.textContent = 'Files';
      details.append(summary, list);
      li.append(details);
    } else if (row.files.length) li.append(list);
    els.storageList.append(li);
  }
  const parts = [];
  parts.push(modelFiles ? `Models: ${fmtBytes(modelBytes)} in ${modelFiles} files.` : 'No models downloaded.');
  if (shellFiles) parts.push(`Page for offline use: ${fmtBytes(shellBytes)}.`);
  if (estimate?.usage != null && estimate?.quota) parts.push(`This site uses ${fmtBytes(estimate.usage)} of ${fmtBytes(estimate.quota)} the browser allows.`);
  els.storageSummary.textContent = parts.join(' ');
  els.storageSummary.dataset.modelFiles = String(modelFiles);
  els.storageDelete.disabled = modelFiles === 0;
  updateCacheHint(selectedUrls());
}

els.storageRefresh.addEventListener('click', refreshStorage);
els.storageDelete.addEventListener('click', async () => {
  els.storageDelete.disabled = true;
  try {
    if (state.api?.LlamaAdapter?.clearCache) await state.api.LlamaAdapter.clearCache();
    else await caches.delete(modelCacheName());
    els.storageSummary.textContent = 'Deleted.';
    setStatus(state.model ? 'Downloaded models deleted. The loaded model stays usable until you leave the page.' : 'Downloaded models deleted.');
  } catch (e) {
    els.storageSummary.textContent = `Could not delete: ${e?.message ?? e}`;
  }
  await refreshStorage();
  els.storageRefresh.focus();
});
els.storagePersist.addEventListener('click', async () => {
  try {
    const ok = await navigator.storage.persist();
    els.storagePersist.hidden = ok;
    setStatus(ok ? 'The browser will keep the downloaded models.' : 'The browser declined to make the storage permanent.');
  } catch {
    els.storagePersist.hidden = true;
  }
});

// ------------------------------------------------------------- service worker

let updateWaiting = null; // 'worker' | 'content'
function showUpdate(kind) {
  updateWaiting = kind;
  els.updateText.textContent = 'A new version of this page is ready.';
  els.updateBanner.hidden = false;
  document.body.dataset.update = 'ready';
}

async function registerServiceWorker() {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return null;
  let reg;
  try {
    reg = await navigator.serviceWorker.register('./sw.js', { scope: './' });
  } catch (e) {
    console.warn('[demo] service worker not registered:', e);
    return null;
  }
  const watch = (worker) => {
    if (!worker) return;
    worker.addEventListener('statechange', () => {
      if (worker.state === 'installed' && navigator.serviceWorker.controller) showUpdate('worker');
    });
  };
  if (reg.waiting && navigator.serviceWorker.controller) showUpdate('worker');
  watch(reg.installing);
  reg.addEventListener('updatefound', () => watch(reg.installing));
  navigator.serviceWorker.addEventListener('message', (e) => {
    if (e.data?.type === 'update-ready') showUpdate('content');
  });
  let reloading = false;
  navigator.serviceWorker.addEventListener('controllerchange', () => {
    if (updateWaiting && !reloading) {
      reloading = true;
      location.reload();
    }
  });
  // Ask the worker whether the page's files changed on the server (it checks in the background).
  navigator.serviceWorker.ready.then((r) => r.active?.postMessage({ type: 'check-update' })).catch(() => {});
  return reg;
}

els.updateReload.addEventListener('click', async () => {
  els.updateReload.disabled = true;
  const reg = await navigator.serviceWorker.getRegistration();
  if (reg?.waiting) {
    reg.waiting.postMessage({ type: 'skip-waiting' }); // controllerchange reloads
    return;
  }
  const sw = navigator.serviceWorker.controller;
  if (sw) {
    const channel = new MessageChannel();
    const done = new Promise((resolve) => {
      channel.port1.onmessage = resolve;
      setTimeout(resolve, 3000);
    });
    sw.postMessage({ type: 'apply-update' }, [channel.port2]);
    await done;
  }
  location.reload();
});
els.updateLater.addEventListener('click', () => {
  els.updateBanner.hidden = true;
});

// ---------------------------------------------------------------------- start

async function start() {
  document.body.dataset.model = 'none';
  document.body.dataset.picture = 'none';
  registerServiceWorker();
  try {
    state.api = await import('./src/index.js');
  } catch (e) {
    els.gpuLine.textContent = 'The engine could not be loaded.';
    els.gpuLine.className = 'gpu-line bad';
    showError({ code: 'internal', message: `Could not load src/index.js: ${e?.message ?? e}` }, 'start');
    els.loadButton.disabled = true;
    return;
  }
  refreshStorage();
  updateModelPicker();
  if (navigator.storage?.persisted) {
    navigator.storage.persisted().then((p) => { els.storagePersist.hidden = p || !navigator.storage.persist; }).catch(() => {});
  }
  const support = await state.api.LlamaAdapter.checkSupport();
  state.support = support;
  const dot = document.createElement('span');
  dot.className = 'dot';
  dot.setAttribute('aria-hidden', 'true');
  if (support.webgpu) {
    els.gpuLine.className = 'gpu-line ok';
    els.gpuLine.replaceChildren(dot, document.createTextNode(`WebGPU ready: ${gpuName(support.adapter) || 'a GPU adapter'}`));
    if (support.adapter?.summary) els.gpuLine.title = support.adapter.summary;
    document.body.dataset.webgpu = 'yes';
  } else {
    els.gpuLine.className = 'gpu-line bad';
    els.gpuLine.replaceChildren(dot, document.createTextNode(support.code === 'engine' ? 'The engine did not start' : 'No WebGPU in this browser'));
    document.body.dataset.webgpu = 'no';
    showError({ code: 'no-webgpu', message: support.reason ?? 'no WebGPU', details: { supportCode: support.code } }, 'start');
    els.askButton.disabled = true;
  }
  updateModelPicker();
  document.body.dataset.ready = 'true';
}

start();
