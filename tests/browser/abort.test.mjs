// Stopping and failing: abort of a load and of a generation, a lost device,
// a model too big for the device. After each the module stays usable.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { assertSameIds, attempt, call, fixtures, launch, openPage, packageFiles, PROMPTS, serve, sha256 } from './harness.mjs';

let fx, server, browser, page, hugeDir, shardPaths;
const BASE = '/m/lora/base/manifest.json';
const ADAPTER = '/m/lora/adapter/manifest.json';
const isShard = (p) => /^\/m\/[a-z]+\//.test(p) && !p.endsWith('/manifest.json');
const greedy = { prompt: PROMPTS.lora.prompt, maxNewTokens: PROMPTS.lora.maxNewTokens, temperature: 0 };

before(async () => {
  fx = fixtures();
  // A copy of the LoRA manifests whose context (KV cache) cannot fit any device.
  hugeDir = path.join(fx.dir, 'huge');
  fs.mkdirSync(path.join(hugeDir, 'base'), { recursive: true });
  fs.mkdirSync(path.join(hugeDir, 'adapter'), { recursive: true });
  const base = JSON.parse(fs.readFileSync(path.join(fx.lora, 'base/manifest.json'), 'utf8'));
  base.config.llama.max_seq_len = 100_000_000;
  const baseBytes = Buffer.from(JSON.stringify(base, null, 2));
  fs.writeFileSync(path.join(hugeDir, 'base/manifest.json'), baseBytes);
  const adapter = JSON.parse(fs.readFileSync(path.join(fx.lora, 'adapter/manifest.json'), 'utf8'));
  adapter.base_sha256 = sha256(baseBytes);
  fs.writeFileSync(path.join(hugeDir, 'adapter/manifest.json'), JSON.stringify(adapter, null, 2));

  shardPaths = [
    ...packageFiles(path.join(fx.lora, 'base')).files.map((f) => `/m/lora/base/${f}`),
    ...packageFiles(path.join(fx.lora, 'adapter')).files.map((f) => `/m/lora/adapter/${f}`),
  ];
  server = await serve({ '/m/lora/': fx.lora, '/m/huge/': hugeDir });
  browser = await launch();
  page = await openPage(await browser.newContext(), server);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test('a model too big for the device is refused with "does-not-fit" before any shard request', async () => {
  server.resetCounts();
  const r = await attempt(page, 'load', 'huge', { base: '/m/huge/base/manifest.json', adapter: '/m/huge/adapter/manifest.json' });
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'does-not-fit', r.error.message);
  assert.match(r.error.message, /smaller|memory/i, 'says what to do');
  assert.deepEqual(server.requests().filter(isShard), [], 'no shard requested');
  assert.equal(r.error.details.totalBytes > r.error.details.maxBufferSize, true, `needed vs offered in details: ${JSON.stringify(r.error.details)}`);
});

test('LlamaAdapter.check vets a model without loading it: fit and size, or the error load would give', async () => {
  server.resetCounts();
  const ok = await call(page, 'check', { base: BASE, adapter: ADAPTER });
  assert.ok(ok.fit.totalBytes > 0 && ok.totalBytes > 0 && ok.files === shardPaths.length, JSON.stringify(ok));
  const huge = await attempt(page, 'check', { base: '/m/huge/base/manifest.json', adapter: '/m/huge/adapter/manifest.json' });
  assert.equal(huge.error?.code, 'does-not-fit');
  const missing = await attempt(page, 'check', { base: '/m/lora/missing/manifest.json', adapter: ADAPTER });
  assert.equal(missing.error?.code, 'network');
  const wrongBase = await attempt(page, 'check', { base: BASE, adapter: '/m/huge/adapter/manifest.json' });
  assert.equal(wrongBase.error?.code, 'wrong-base', wrongBase.error?.message);
  assert.deepEqual(server.requests().filter(isShard), [], 'check fetches no shard');
});

test('aborting a load mid-download rejects with "aborted"; the next load works', async () => {
  await call(page, 'clearCache');
  for (const p of shardPaths) server.slowPath(p, { bytesPerSecond: 128 * 1024 });
  server.resetCounts();
  const t0 = Date.now();
  const r = await attempt(page, 'load', 'x', { base: BASE, adapter: ADAPTER, abortOnPhase: 'download' });
  server.clearFaults();
  assert.equal(r.ok, false, 'the load is rejected');
  assert.equal(r.error.code, 'aborted', r.error.message);
  assert.ok(r.error.details.events.some((e) => e.phase === 'download'));
  assert.ok(Date.now() - t0 < 10_000, 'rejected promptly');
  assert.ok(server.requests().filter(isShard).length < shardPaths.length, 'fetching stopped');

  const ok = await call(page, 'load', 'lora', { base: BASE, adapter: ADAPTER });
  assert.equal(ok.events.at(-1).phase, 'ready');
});

test('aborting a generation after 2 tokens ends it with "aborted"; the next generate is complete and correct', async () => {
  await call(page, 'encodeUrl', 'lora', 'kafka', '/fixtures/images/franz-kafka.jpg');
  const r = await attempt(page, 'generate', 'lora', { ...greedy, imageName: 'kafka', abortAfterTokens: 2 });
  assert.equal(r.ok, false, 'the iteration throws');
  assert.equal(r.error.code, 'aborted', r.error.message);
  assert.ok(r.error.details.tokens.length >= 2 && r.error.details.tokens.length < PROMPTS.lora.maxNewTokens, `stopped early (${r.error.details.tokens.length} tokens)`);
  assertSameIds(assert, r.error.details.tokens, fx.native.lora.generatedIds.slice(0, r.error.details.tokens.length), 'tokens before the abort');

  const g = await call(page, 'generate', 'lora', { ...greedy, imageName: 'kafka' });
  assertSameIds(assert, g.tokens, fx.native.lora.generatedIds, 'after the abort');
  assert.equal(g.tokens.length, fx.native.lora.generatedIds.length);

  // Leaving the loop early (break) also stops it, and the engine is idle right after.
  const b = await call(page, 'generate', 'lora', { ...greedy, imageName: 'kafka', breakAfterTokens: 3 });
  assert.equal(b.tokens.length, 3);
  const again = await call(page, 'generate', 'lora', { ...greedy, maxNewTokens: 5, imageName: 'kafka' });
  assertSameIds(assert, again.tokens, fx.native.lora.generatedIds.slice(0, 5), 'after break');
});

test('a lost device mid-generation rejects with "device-lost"; a fresh load works without a page reload', async () => {
  const r = await attempt(page, 'generate', 'lora', { ...greedy, imageName: 'kafka', destroyAfterTokens: 2 });
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'device-lost', r.error.message);
  assert.match(r.error.message, /load the model again/i);
  const after = await attempt(page, 'generate', 'lora', { ...greedy, imageName: 'kafka' });
  assert.equal(after.error?.code, 'device-lost', 'the dead model keeps saying so');

  await call(page, 'dispose', 'lora');
  await call(page, 'load', 'fresh', { base: BASE, adapter: ADAPTER });
  await call(page, 'encodeUrl', 'fresh', 'kafka2', '/fixtures/images/franz-kafka.jpg');
  const g = await call(page, 'generate', 'fresh', { ...greedy, imageName: 'kafka2' });
  assertSameIds(assert, g.tokens, fx.native.lora.generatedIds, 'after the device loss');
  await call(page, 'dispose', 'fresh');
});

test('a Rust panic (a bug) becomes "internal", the model reports it from then on, and a fresh load works', async () => {
  await call(page, 'load', 'doomed', { base: BASE, adapter: ADAPTER });
  const r = await attempt(page, 'panic', 'doomed');
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'internal', r.error.message);
  assert.equal(r.error.isLlamaAdapterError, true, 'a LlamaAdapterError, not a raw RuntimeError');
  const after = await attempt(page, 'generate', 'doomed', { ...greedy });
  assert.equal(after.error?.code, 'internal', 'the dead engine keeps saying so');
  await call(page, 'dispose', 'doomed');

  await call(page, 'load', 'reborn', { base: BASE, adapter: ADAPTER });
  await call(page, 'encodeUrl', 'reborn', 'kafka3', '/fixtures/images/franz-kafka.jpg');
  const g = await call(page, 'generate', 'reborn', { ...greedy, imageName: 'kafka3' });
  assertSameIds(assert, g.tokens, fx.native.lora.generatedIds, 'after the panic');
  await call(page, 'dispose', 'reborn');
});
