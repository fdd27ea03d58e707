// The module in a page gives exactly the native tool's token ids: the shipped
// default model, the LoRA fixture, and the bias fixture swapped in with
// setAdapter. Also: progress events of a cold load, peak wasm heap, busy,
// bad input, context overflow.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { assertSameIds, attempt, call, checkProgress, fixtures, launch, MiB, openPage, packageFiles, PROMPTS, serve, WWW } from './harness.mjs';

let fx, server, browser, page;

before(async () => {
  fx = fixtures();
  server = await serve({ '/m/lora/': fx.lora, '/m/bias/': fx.bias });
  browser = await launch();
  page = await openPage(await browser.newContext(), server);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const greedy = (p) => ({ prompt: p.prompt, maxNewTokens: p.maxNewTokens, temperature: 0 });

test('default model: cold load progress, peak wasm heap, and the native token ids', async (t) => {
  await call(page, 'clearCache');
  const r = await call(page, 'load', 'default', { base: '/models/default/base/manifest.json', adapter: '/models/default/adapter/manifest.json' });
  const phases = checkProgress(assert, r.events, r.info.bytes.total);
  for (const p of ['download', 'verify', 'upload', 'compile', 'ready']) assert.ok(phases.has(p), `phase ${p} seen in a cold load (saw ${[...phases]})`);
  const base = packageFiles(path.join(WWW, 'models/default/base')).manifest;
  const adapter = packageFiles(path.join(WWW, 'models/default/adapter')).manifest;
  const planned = [...base.shards, base.tokenizer, ...adapter.shards].reduce((s, f) => s + f.bytes, 0);
  assert.equal(r.info.bytes.total, planned, 'totalBytes = shard + tokenizer bytes of both manifests');

  const largest = r.info.largestShardBytes;
  const peak = Math.max(r.info.wasmMemoryBytes, (await call(page, 'memory', 'default')).wasmMemoryBytes);
  t.diagnostic(`peak wasm memory after the default-model load: ${(peak / MiB).toFixed(1)} MiB (largest shard ${(largest / MiB).toFixed(1)} MiB; bound ${((largest + 32 * MiB) / MiB).toFixed(1)} MiB)`);
  assert.ok(peak <= largest + 32 * MiB, `peak wasm heap ${peak} ≤ largest shard ${largest} + 32 MiB`);

  await call(page, 'encodeUrl', 'default', 'shapes1', `/${PROMPTS.default.image.replace(/^www\//, '')}`);
  const g = await call(page, 'generate', 'default', { ...greedy(PROMPTS.default), imageName: 'shapes1' });
  t.diagnostic(`default model: ${JSON.stringify(g.lastResult.text)}; decode ${g.lastResult.timings?.decodeTokensPerS?.toFixed?.(1)} tok/s`);
  assertSameIds(assert, g.tokens, fx.native.default.generatedIds, 'default model');
  assert.deepEqual(g.lastResult.generatedIds, g.tokens, 'streamed ids = result ids');
  assert.deepEqual(g.lastResult.promptIds, fx.native.default.promptIds, 'prompt ids equal the native tool');
  assert.equal(g.lastResult.text, fx.native.default.text, 'text equals the native tool');
  assert.equal(g.pieces.join(''), g.lastResult.text, 'the streamed pieces add up to the text');
});

test('default model: an ImageBitmap of the PNG gives the same ids as its bytes', async () => {
  await call(page, 'encodeUrl', 'default', 'shapes1bitmap', '/models/default/examples/shapes-1.png', 'bitmap');
  const g = await call(page, 'generate', 'default', { ...greedy(PROMPTS.default), imageName: 'shapes1bitmap' });
  assertSameIds(assert, g.tokens, fx.native.default.generatedIds, 'ImageBitmap path');
  await call(page, 'dispose', 'default');
});

test('LoRA fixture: the native token ids', async () => {
  await call(page, 'load', 'lora', { base: '/m/lora/base/manifest.json', adapter: '/m/lora/adapter/manifest.json' });
  await call(page, 'encodeUrl', 'lora', 'kafka', '/fixtures/images/franz-kafka.jpg');
  const g = await call(page, 'generate', 'lora', { ...greedy(PROMPTS.lora), imageName: 'kafka' });
  assertSameIds(assert, g.tokens, fx.native.lora.generatedIds, 'LoRA');
  assert.deepEqual(g.lastResult.promptIds, fx.native.lora.promptIds);
});

test('profile(): every dispatch of a decode step timed, bad options refused, the outputs unchanged', async () => {
  const config = await page.evaluate(() => T.models.get('lora').info.config);
  const kernels = await call(page, 'profile', 'lora', { imageName: 'kafka', position: 20, reps: 2 });
  // Per layer 8 dispatches, LoRA one u = x·L1ᵀ matmul before each of the 4
  // matmuls (L2 is in their epilogue), and on a hardware adapter the split-K
  // attention's combine; then embedding, final norm and head (the plan's
  // argmax is not a forward dispatch). CPU adapters keep the single pass
  // (tests/decode_plan.rs holds lavapipe to it).
  const split = kernels.some((k) => k.label === 'attention/attention_combine') ? 1 : 0;
  const perLayer = 8 + (config.adapter.w_lora ? 4 : 0) + split;
  assert.equal(kernels.reduce((s, k) => s + k.dispatches, 0), perLayer * config.llama.n_layers + 3, JSON.stringify(kernels));
  assert.ok(kernels.every((k) => Number.isFinite(k.ms) && k.ms >= 0 && k.label.includes('/') && k.workgroups.length === 3), JSON.stringify(kernels));
  const bad = await attempt(page, 'profile', 'lora', { tokens: 1.5 });
  assert.equal(bad.error?.code, 'bad-input');
  assert.equal(bad.error.details?.field, 'tokens');
  const over = await attempt(page, 'profile', 'lora', { tokens: 2, position: config.llama.max_seq_len - 1 });
  assert.equal(over.error?.code, 'context-overflow', over.error?.message);
  const g = await call(page, 'generate', 'lora', { ...greedy(PROMPTS.lora), imageName: 'kafka' });
  assertSameIds(assert, g.tokens, fx.native.lora.generatedIds, 'after profile()');
});

test('a second generate while one runs is refused with "busy"; the first completes', async () => {
  const r = await call(page, 'generateTwice', 'lora', { ...greedy(PROMPTS.lora), imageName: 'kafka' });
  assert.equal(r.second.ok, false, 'the second generate fails');
  assert.equal(r.second.error.code, 'busy', r.second.error.message);
  assert.equal(r.first.ok, true, r.first.error?.message);
  assertSameIds(assert, r.first.value.generatedIds, fx.native.lora.generatedIds, 'the first generation');
});

test('bad input: a text Blob as a picture, and a prompt over the context', async () => {
  const a = await attempt(page, 'encodeText', 'lora', 'this is not a picture at all');
  assert.equal(a.ok, false);
  assert.equal(a.error.code, 'bad-input', a.error.message);
  const b = await attempt(page, 'generate', 'lora', { prompt: 'What is in this picture?', maxNewTokens: 1_000_000, temperature: 0, imageName: 'kafka' });
  assert.equal(b.ok, false);
  assert.equal(b.error.code, 'context-overflow', b.error.message);
  const c = await attempt(page, 'generate', 'lora', { prompt: 42 });
  assert.equal(c.error?.code, 'bad-input');
  // Which option was wrong is said: the picture given straight to generate, a bad temperature.
  const d = await attempt(page, 'completeWithBlob', 'lora', { prompt: 'What is in this picture?', maxNewTokens: 2 }, 'not a picture');
  assert.equal(d.error?.code, 'bad-input', d.error?.message);
  assert.equal(d.error.details?.field, 'image');
  const e = await attempt(page, 'generate', 'lora', { prompt: 'Hi', temperature: -1 });
  assert.equal(e.error?.code, 'bad-input');
  assert.equal(e.error.details?.field, 'temperature');
  // Still usable afterwards.
  const g = await call(page, 'generate', 'lora', { ...greedy(PROMPTS.lora), maxNewTokens: 4, imageName: 'kafka' });
  assertSameIds(assert, g.tokens, fx.native.lora.generatedIds.slice(0, 4), 'after bad input');
});

test('setAdapter(bias): the base stays, only adapter shards move, outputs equal native', async () => {
  server.resetCounts();
  const r = await call(page, 'setAdapter', 'lora', '/m/bias/adapter/manifest.json');
  const baseRequests = server.requests().filter((p) => /^\/m\/(lora|bias)\/base\//.test(p));
  assert.deepEqual(baseRequests, [], 'no base file (manifest or shard) requested');
  const adapterFiles = packageFiles(path.join(fx.bias, 'adapter'));
  const adapterBytes = adapterFiles.manifest.shards.reduce((s, f) => s + f.bytes, 0);
  checkProgress(assert, r.events, adapterBytes);
  const uploads = r.events.filter((e) => e.phase === 'upload');
  assert.equal(uploads.length, adapterFiles.manifest.shards.length, 'one upload per adapter shard');
  assert.ok(r.events.every((e) => !e.shard || e.shard.package === 'adapter'), 'progress covers adapter shards only');
  assert.equal(r.info.adapter.url, server.url('/m/bias/adapter/manifest.json'));

  // The picture encoded before the swap still works (the engine re-derives its prefixes).
  const g = await call(page, 'generate', 'lora', { ...greedy(PROMPTS.lora), imageName: 'kafka' });
  assertSameIds(assert, g.tokens, fx.native.bias.generatedIds, 'bias adapter');
  assert.notDeepEqual(fx.native.bias.generatedIds, fx.native.lora.generatedIds, 'the two adapters differ (else this test proves nothing)');
  await call(page, 'dispose', 'lora');
});
