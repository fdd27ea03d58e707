// A browser without WebGPU: checkSupport says so and why (naming browsers),
// load rejects with "no-webgpu" and starts no download.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { attempt, call, launch, openPage, serve } from './harness.mjs';

let server, browser, page;

before(async () => {
  server = await serve();
  // No WebGPU flags, and navigator.gpu removed before any script runs.
  browser = await launch({ webgpu: false });
  page = await openPage(await browser.newContext(), server, {
    initScript: () => {
      delete Navigator.prototype.gpu;
      delete navigator.gpu;
    },
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test('checkSupport reports no WebGPU with a reason that names browsers', async () => {
  assert.equal(await page.evaluate(() => 'gpu' in navigator), false);
  const s = await call(page, 'checkSupport');
  assert.equal(s.webgpu, false);
  assert.equal(typeof s.reason, 'string');
  for (const word of ['Chrome', 'Edge', 'Safari', 'Firefox', 'enable-unsafe-webgpu']) assert.ok(s.reason.includes(word), `reason names ${word}: ${s.reason}`);
});

test('load rejects with "no-webgpu" before fetching anything', async () => {
  server.resetCounts();
  const r = await attempt(page, 'load', 'm', { base: '/models/default/base/manifest.json', adapter: '/models/default/adapter/manifest.json' });
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'no-webgpu');
  assert.equal(r.error.isLlamaAdapterError, true);
  assert.match(r.error.message, /Safari 26/);
  assert.deepEqual(server.requests().filter((p) => p.startsWith('/models/') || p.startsWith('/pkg/')), [], 'nothing fetched');
});

test('with WebGPU present the same page reports support', async () => {
  const b = await launch();
  try {
    const p = await openPage(await b.newContext(), server);
    const s = await call(p, 'checkSupport');
    assert.equal(s.webgpu, true, s.reason);
    assert.equal(typeof s.adapter?.name, 'string');
  } finally {
    await b.close();
  }
});
