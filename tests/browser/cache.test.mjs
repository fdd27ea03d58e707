// The loader's cache: second loads make no shard requests, a corrupt entry is
// evicted and fetched again, an interrupted download resumes from what was
// stored, a failing manifest request falls back to the stored copy, a full
// quota is reported while the model runs from memory.
// Uses the many-shard (64 KiB) LoRA package.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { assertSameIds, attempt, call, fixtures, launch, openPage, packageFiles, PROMPTS, serve } from './harness.mjs';

let fx, server, browser, context, page;
const BASE = '/m/lora/base/manifest.json';
const ADAPTER = '/m/lora/adapter/manifest.json';
let shardPaths; // every shard + tokenizer path of the lora base and adapter

const isShard = (p) => p.startsWith('/m/lora/') && !p.endsWith('/manifest.json');
const shardRequests = () => server.requests().filter(isShard);

before(async () => {
  fx = fixtures();
  server = await serve({ '/m/lora/': fx.lora });
  const base = packageFiles(path.join(fx.lora, 'base'));
  const adapter = packageFiles(path.join(fx.lora, 'adapter'));
  shardPaths = [...base.files.map((f) => `/m/lora/base/${f}`), ...adapter.files.map((f) => `/m/lora/adapter/${f}`)];
  assert.ok(base.manifest.shards.length >= 6, `the LoRA base should have many shards (has ${base.manifest.shards.length})`);
  browser = await launch();
  context = await browser.newContext();
  page = await openPage(context, server);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

async function load(p, key, opts = {}) {
  return call(p, 'load', key, { base: BASE, adapter: ADAPTER, ...opts });
}

test('cold load fetches every shard once, then a second load in the same page fetches none', async () => {
  await call(page, 'clearCache');
  server.resetCounts();
  const cold = await load(page, 'a');
  assert.deepEqual([...shardRequests()].sort(), [...shardPaths].sort(), 'each shard requested exactly once');
  assert.equal(cold.info.fromCache, false);
  assert.equal(cold.info.cacheError, null);
  assert.equal(cold.info.bytes.fromNetwork, cold.info.bytes.total);
  assert.ok(cold.info.storage === null || typeof cold.info.storage.usage === 'number', 'storage estimate in info');
  const keys = await call(page, 'cacheKeys');
  for (const p of shardPaths) assert.ok(keys.some((k) => k.includes(`${p}?sha256=`)), `${p} cached under ?sha256=`);
  await call(page, 'dispose', 'a');

  server.resetCounts();
  const warm = await load(page, 'b');
  assert.deepEqual(shardRequests(), [], 'no shard requests on the second load');
  assert.equal(warm.info.fromCache, true);
  assert.equal(warm.info.bytes.fromCache, warm.info.bytes.total);
  const phases = new Set(warm.events.map((e) => e.phase));
  assert.ok(phases.has('cache') && !phases.has('download'), `phases of a cached load: ${[...phases]}`);
  assert.equal(warm.events.at(-1).phase, 'ready');
  assert.equal(warm.events.at(-1).loadedBytes, warm.events.at(-1).totalBytes);
  await call(page, 'dispose', 'b');
});

test('a fresh page in the same browser context loads from the cache', async () => {
  const other = await openPage(context, server);
  try {
    server.resetCounts();
    const r = await load(other, 'c');
    assert.deepEqual(shardRequests(), [], 'no shard requests from the second page');
    assert.equal(r.info.fromCache, true);
    await call(other, 'dispose', 'c');
  } finally {
    await other.close();
  }
});

test('a corrupt cached shard is evicted and fetched again (only that one)', async () => {
  const victim = shardPaths[2];
  const hit = await call(page, 'corruptCache', `${victim}?`);
  assert.equal(hit.length, 1, 'one entry overwritten');
  server.resetCounts();
  const r = await load(page, 'd');
  assert.deepEqual(shardRequests(), [victim], 'exactly the corrupt shard requested again');
  assert.ok(r.info.cache.evicted.some((u) => u.endsWith(victim)), 'reported as evicted');
  await call(page, 'dispose', 'd');
  server.resetCounts();
  await load(page, 'd2');
  assert.deepEqual(shardRequests(), [], 'the refetched copy is good in the cache');
  await call(page, 'dispose', 'd2');
});

test('a download interrupted halfway fails with "network"; the retry fetches only what is missing', async () => {
  await call(page, 'clearCache');
  const baseShards = shardPaths.filter((p) => p.startsWith('/m/lora/base/shard'));
  const cut = baseShards[Math.floor(baseShards.length / 2)];
  server.closePath(cut, { times: 1 });
  server.resetCounts();
  const r = await attempt(page, 'load', 'e', { base: BASE, adapter: ADAPTER });
  assert.equal(r.ok, false, 'the load fails');
  assert.equal(r.error.code, 'network', r.error.message);
  assert.equal(r.error.isLlamaAdapterError, true);
  assert.match(r.error.message, /try again|connection/i, 'the message says what to do');
  const cached = (await call(page, 'cacheKeys')).map((k) => new URL(k).pathname);
  assert.ok(!cached.includes(cut), 'the broken shard is not cached');
  assert.ok(cached.filter(isShard).length > 0, 'some shards were cached before the failure');

  server.resetCounts();
  const retry = await load(page, 'e');
  const expected = shardPaths.filter((p) => !cached.includes(p));
  assert.deepEqual([...shardRequests()].sort(), [...expected].sort(), 'the retry requests exactly the shards not cached');
  assert.ok(shardRequests().includes(cut));
  assert.ok(retry.info.bytes.fromCache > 0 && retry.info.bytes.fromNetwork > 0);
  await call(page, 'dispose', 'e');
});

test('manifests fall back to the cached copy when the server fails', async () => {
  server.failPath(BASE, { status: 503 });
  server.failPath(ADAPTER, { status: 503 });
  try {
    server.resetCounts();
    const r = await load(page, 'f');
    assert.equal(r.info.manifestFromCache, true);
    assert.equal(r.info.fromCache, true);
    assert.deepEqual(shardRequests(), []);
    await call(page, 'dispose', 'f');
  } finally {
    server.clearFaults();
  }
});

test('cache: false fetches everything and stores nothing', async () => {
  await call(page, 'clearCache');
  server.resetCounts();
  const r = await load(page, 'g', { cache: false });
  assert.deepEqual([...shardRequests()].sort(), [...shardPaths].sort());
  assert.equal(r.info.cache.enabled, false);
  const keys = await call(page, 'cacheKeys');
  assert.deepEqual(keys, [], 'nothing stored');
  await call(page, 'dispose', 'g');
});

test('a full storage quota is reported, and the model still loads and answers from memory', async () => {
  // A fresh page whose origin gets a 256 KiB quota through the DevTools
  // protocol: the first shards fit, then Cache.put throws QuotaExceededError.
  const quotaPage = await openPage(context, server);
  const cdp = await context.newCDPSession(quotaPage);
  const origin = new URL(server.url('/')).origin;
  await call(quotaPage, 'clearCache');
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: 256 * 1024 });
  try {
    server.resetCounts();
    const r = await load(quotaPage, 'q');
    assert.deepEqual([...shardRequests()].sort(), [...shardPaths].sort(), 'everything came from the network');
    assert.equal(r.info.cache.errorCode, 'quota', JSON.stringify(r.info.cache));
    assert.match(r.info.cacheError, /quota/i, 'the reason is said for a person');
    assert.equal(r.events.at(-1).phase, 'ready');
    const greedy = { prompt: PROMPTS.lora.prompt, maxNewTokens: 6, temperature: 0 };
    await call(quotaPage, 'encodeUrl', 'q', 'kafka-q', '/fixtures/images/franz-kafka.jpg');
    const g = await call(quotaPage, 'generate', 'q', { ...greedy, imageName: 'kafka-q' });
    assertSameIds(assert, g.tokens, fx.native.lora.generatedIds.slice(0, 6), 'answers from memory');
    await call(quotaPage, 'dispose', 'q');
  } finally {
    await cdp.send('Storage.overrideQuotaForOrigin', { origin });
    await quotaPage.close();
  }
});
