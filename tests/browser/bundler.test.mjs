// The npm module through a bundler: a tiny app that imports
// 'llama-adapter-web' by its package name is built by Vite (production
// build, default options), served from its dist/ folder alone, and answers
// about a picture with the native tool's token ids. This proves that the
// package's `exports`, its worker (`new Worker(new URL('./worker.js',
// import.meta.url))`) and its .wasm (`new URL('../pkg/…', import.meta.url)`)
// survive bundling.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { build } from 'vite';
import { fixtures, launch, PROMPTS, WWW, assertSameIds } from './harness.mjs';
import { serve as serveStatic } from '../../tools/serve.mjs';

let app, dist, server, browser;

before(async () => {
  app = fs.mkdtempSync(path.join(os.tmpdir(), 'llama-adapter-vite-'));
  // The package as an installed dependency would be: node_modules/llama-adapter-web → www/.
  fs.mkdirSync(path.join(app, 'node_modules'));
  fs.symlinkSync(WWW, path.join(app, 'node_modules', 'llama-adapter-web'), 'dir');
  fs.writeFileSync(path.join(app, 'index.html'), '<!doctype html><meta charset="utf-8"><title>bundled</title><script type="module" src="./main.js"></script>\n');
  fs.writeFileSync(
    path.join(app, 'main.js'),
    `import { LlamaAdapter, LlamaAdapterError } from 'llama-adapter-web';
window.run = async (prompt, maxNewTokens) => {
  const model = await LlamaAdapter.load({ base: '/models/default/base/manifest.json', adapter: '/models/default/adapter/manifest.json' });
  const picture = await (await fetch('/models/default/examples/shapes-1.png')).blob();
  const image = await model.encodeImage(picture);
  const ids = [];
  for await (const piece of model.generate({ prompt, image, maxNewTokens, temperature: 0 })) ids.push(piece.tokenId);
  await model.dispose();
  return { ids, errorClass: typeof LlamaAdapterError === 'function' };
};
window.ready = true;
`,
  );
  dist = path.join(app, 'dist');
  await build({ root: app, logLevel: 'warn', build: { outDir: dist, emptyOutDir: true } });
  // The model is data, not part of the bundle: serve it beside dist/ as a site would.
  fs.symlinkSync(path.join(WWW, 'models'), path.join(dist, 'models'), 'dir');
  server = await serveStatic({ root: dist, port: 0 });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.close();
  if (app) fs.rmSync(app, { recursive: true, force: true });
});

test('Vite bundles the module, its worker and its wasm', () => {
  const assets = fs.readdirSync(path.join(dist, 'assets'));
  assert.ok(assets.some((f) => f.endsWith('.wasm')), `a .wasm asset: ${assets}`);
  assert.ok(assets.filter((f) => f.endsWith('.js')).length >= 2, `the page's and the worker's chunks: ${assets}`);
  assert.ok(!fs.existsSync(path.join(dist, 'node_modules')), 'nothing is served from node_modules');
});

test('the bundled app answers with the native token ids', { timeout: 180_000 }, async () => {
  const { native } = fixtures();
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(server.url);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 30_000 });
  const p = PROMPTS.default;
  const r = await page.evaluate(([prompt, n]) => window.run(prompt, n), [p.prompt, p.maxNewTokens]);
  assert.equal(r.errorClass, true);
  assertSameIds(assert, r.ids, native.default.generatedIds, 'bundled app, default model');
  assert.deepEqual(errors, []);
  await page.close();
});

