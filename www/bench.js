// The browser bench: load (cold, then from the cache), vision, prefill and
// decode speed, peak wasm memory. Writes one JSON object to #result and to
// window.benchResult (window.benchError on failure). Driven headless by
// tests/browser/bench.mjs.

import { LlamaAdapter } from './src/index.js';

const params = new URLSearchParams(location.search);
const status = document.getElementById('status');
const out = document.getElementById('result');
const say = (text) => {
  status.textContent = text;
};

/** A prompt of about `n` tokens: common short words are one token each in the LLaMA vocabulary. */
function promptOfTokens(n) {
  const words = 'the cat sat on a red mat and saw one big blue box near the old green door'.split(' ');
  const out = ['Describe'];
  for (let i = 0; out.length < n; i++) out.push(words[i % words.length]);
  return out.join(' ');
}

/** A synthetic test picture (shapes on a background), as ImageData. */
function testPicture(size = 256) {
  const canvas = new OffscreenCanvas(size, size);
  const g = canvas.getContext('2d');
  g.fillStyle = '#f0f0e0';
  g.fillRect(0, 0, size, size);
  g.fillStyle = '#c03030';
  g.beginPath();
  g.arc(size * 0.3, size * 0.35, size * 0.18, 0, Math.PI * 2);
  g.fill();
  g.fillStyle = '#3050c0';
  g.fillRect(size * 0.55, size * 0.5, size * 0.3, size * 0.3);
  return g.getImageData(0, 0, size, size);
}

async function timed(fn) {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

async function main() {
  const base = params.get('base') ?? './models/default/base/manifest.json';
  const adapter = params.get('adapter') ?? './models/default/adapter/manifest.json';
  const promptTokens = Number(params.get('prompt') ?? 128);
  const newTokens = Number(params.get('new') ?? 32);
  const cold = params.get('cold') !== '0';

  const support = await LlamaAdapter.checkSupport();
  if (!support.webgpu) throw Object.assign(new Error(support.reason), { code: 'no-webgpu' });

  if (cold) await LlamaAdapter.clearCache();
  say('loading (cold)…');
  let lastProgress = 0;
  let compileAt = 0;
  let loadStart = 0;
  const phaseTimes = [];
  const onProgress = (e) => {
    if (e.phase === 'compile') compileAt = performance.now();
    if (e.phase === 'ready') phaseTimes.push({ filesMs: compileAt - loadStart, compileMs: performance.now() - compileAt });
    if (performance.now() - lastProgress > 200 || e.phase === 'ready') {
      lastProgress = performance.now();
      say(`loading: ${e.phase} ${(e.loadedBytes / 2 ** 20).toFixed(1)} / ${(e.totalBytes / 2 ** 20).toFixed(1)} MiB`);
    }
  };
  loadStart = performance.now();
  const first = await timed(() => LlamaAdapter.load({ base, adapter, onProgress }));
  const coldInfo = first.value.info;
  await first.value.dispose();

  say('loading (from the cache)…');
  loadStart = performance.now();
  const second = await timed(() => LlamaAdapter.load({ base, adapter, onProgress }));
  const model = second.value;

  say('vision…');
  const imageUrl = params.get('image');
  const source = imageUrl ? await (await fetch(imageUrl)).blob() : testPicture();
  const vision1 = await timed(() => model.encodeImage(source));
  const vision2 = await timed(() => model.encodeImage(source));
  vision2.value.release();

  // Warm-up, which also measures the prompt template's own tokens so the
  // timed prompt comes out at about `promptTokens` in total.
  say('generating (warm-up)…');
  const probeWords = 8;
  const probe = await model.complete({ prompt: promptOfTokens(probeWords), maxNewTokens: 2, temperature: 0, image: vision1.value });
  const overhead = Math.max(0, probe.promptIds.length - probeWords);
  say('generating…');
  const gen = await timed(() =>
    model.complete({ prompt: promptOfTokens(Math.max(1, promptTokens - overhead)), maxNewTokens: newTokens, temperature: 0, image: vision1.value }),
  );
  const r = gen.value;
  // Where a decode step's GPU time goes, at the timed run's last position.
  const decodeProfile = params.get('profile') === '1' ? await model.profile({ tokens: 1, position: r.promptIds.length + r.generatedIds.length, image: vision1.value }) : null;
  const memory = await model.memoryUsage();
  const info = model.info;

  const result = {
    userAgent: navigator.userAgent,
    gpu: info.gpu,
    model: {
      base,
      adapter,
      config: info.config,
      gpuBytes: info.gpuBytes,
      totalBytes: info.bytes.total,
      largestShardBytes: info.largestShardBytes,
      adapterSummary: info.adapter.config,
    },
    load: {
      coldMs: first.ms,
      /** start → every file fetched, verified and written to the GPU (wasm start-up included) */
      coldFilesMs: phaseTimes[0]?.filesMs ?? null,
      /** finishLoad: model build, pipeline compilation and warm-up pass */
      coldCompileMs: phaseTimes[0]?.compileMs ?? null,
      coldFromCache: coldInfo.fromCache,
      cachedMs: second.ms,
      cachedFilesMs: phaseTimes[1]?.filesMs ?? null,
      cachedCompileMs: phaseTimes[1]?.compileMs ?? null,
      cachedFromCache: info.fromCache,
      cacheError: info.cacheError,
      storage: info.storage,
    },
    vision: { firstMs: vision1.ms, secondMs: vision2.ms },
    generate: {
      promptTokens: r.promptIds.length,
      requestedPromptTokens: promptTokens,
      requestedNewTokens: newTokens,
      newTokens: r.generatedIds.length,
      stoppedAtEos: r.stoppedAtEos,
      prefillMs: r.timings.prefillMs,
      decodeMs: r.timings.decodeMs,
      prefillTokensPerS: r.timings.prefillTokensPerS,
      decodeTokensPerS: r.timings.decodeTokensPerS,
      wallMs: gen.ms,
    },
    decodeProfile,
    memory: { peakWasmBytes: Math.max(memory.wasmMemoryBytes, coldInfo.wasmMemoryBytes), wasmAfterColdLoadBytes: coldInfo.wasmMemoryBytes },
  };
  await model.dispose();
  return result;
}

main().then(
  (result) => {
    window.benchResult = result;
    out.textContent = JSON.stringify(result, null, 2);
    say('done');
  },
  (e) => {
    window.benchError = { code: e?.code ?? null, message: String(e?.message ?? e) };
    out.textContent = JSON.stringify(window.benchError, null, 2);
    say(`failed: ${e?.code ?? ''} ${e?.message ?? e}`);
  },
);
