// The demo page (www/index.html) through headless Chromium with software
// WebGPU (SwiftShader): the default model answers like the native CLI, stop,
// the friendly error states, keyboard-only use, the offline PWA (service
// worker + model cache), the update banner, and the storage panel.
// Screenshots (light/dark, desktop/phone) go to /tmp/demo-shots/.
//
//   node --test tests/browser/demo.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, symlinkSync, copyFileSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { serve } from '../../tools/serve.mjs';
import { CHROMIUM_ARGS, loadPlaywright, waitForPage, pageError } from '../../tools/demo-headless.mjs';

const WWW = fileURLToPath(new URL('../../www', import.meta.url));
const SHOTS = process.env.DEMO_SHOTS ?? '/tmp/demo-shots';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// tools/demo.sh's native answer: shapes-1.png, "Describe this image.", greedy, 32 new tokens.
const NATIVE_ANSWER = 'A purple circle, a yellow triangle, a yellow square and a blue hexagon.';
const MODEL_CACHE = 'llama-adapter-web-models-v1';

let browser;
let server;
let port;
let chromium;
const requests = [];
const onRequest = (r) => requests.push(r.url);

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  ({ chromium } = await loadPlaywright());
  server = await serve({ root: WWW, port: 0, onRequest });
  port = server.port;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const url = (p = '') => `http://127.0.0.1:${port}/${p}`;

async function openPage(context, address = url(), { expectError = false } = {}) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[page error] ${e}`));
  await page.goto(address);
  if (expectError) await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 60_000 });
  else await waitForPage(page, () => document.body.dataset.ready === 'true', { timeout: 60_000, what: 'the WebGPU check' });
  return page;
}

async function loadModel(page) {
  await page.click('#load-button');
  await waitForPage(page, () => document.body.dataset.model === 'ready' && document.body.dataset.loading !== 'true', { timeout: 120_000, what: 'the model' });
  return page.evaluate(() => window.llamaDemo.state.lastLoad);
}

async function settings(page, { maxNewTokens, temperature } = {}) {
  const open = await page.evaluate(() => document.getElementById('settings').open);
  if (!open) await page.click('#settings > summary');
  if (maxNewTokens != null) await page.fill('#max-tokens', String(maxNewTokens));
  if (temperature != null) await page.fill('#temperature', String(temperature));
}

async function waitAnswer(page) {
  await waitForPage(page, () => ['done', 'stopped', 'empty'].includes(document.body.dataset.answer) && document.body.dataset.generating === 'false', {
    timeout: 120_000,
    what: 'the answer',
  });
  return page.evaluate(() => ({ ...window.llamaDemo.state.lastRun, shown: document.getElementById('answer').textContent }));
}

async function ask(page, prompt) {
  await page.fill('#instruction', prompt);
  await page.click('#ask-button');
  return waitAnswer(page);
}

async function pickExample(page, n = 0) {
  await page.click(`#examples .example >> nth=${n}`);
  await waitForPage(page, () => document.body.dataset.picture === 'set', { timeout: 20_000, what: 'the example picture' });
}

async function swReady(page) {
  await page.waitForFunction(() => !!navigator.serviceWorker.controller, null, { timeout: 60_000 });
}

async function shot(page, name) {
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

// The page of the first context: loaded once, reused by the tests after it.
let main;
let mainContext;

test('loads the default model and answers about an example like the native CLI', { timeout: 180_000 }, async () => {
  mainContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  main = await openPage(mainContext);
  assert.match(await main.locator('#gpu-line').innerText(), /WebGPU ready/);
  const load = await loadModel(main);
  assert.equal(load.fromCache, false, 'first load downloads');
  assert.ok(load.bytes > 17e6, `model bytes ${load.bytes}`);
  const infoText = await main.locator('#model-info').innerText();
  assert.match(infoText, /GPU/);
  assert.match(infoText, /Demonstration model/);
  assert.match(infoText, /the network/);

  await pickExample(main, 0);
  await settings(main, { maxNewTokens: 32, temperature: 0 });
  const run = await ask(main, 'Describe this image.');
  assert.ok(run.text.trim().length > 0, 'non-empty answer');
  assert.equal(run.text.trim(), NATIVE_ANSWER);
  assert.equal(run.shown.trim(), NATIVE_ANSWER);
  assert.ok(run.decodeTokensPerS > 0 && run.timeToFirstTokenMs > 0, JSON.stringify(run));
  const stats = await main.locator('#stats').innerText();
  assert.match(stats, /tokens\/s/);
  assert.match(stats, /First token/);
});

test('screenshots: light and dark, desktop and phone', { timeout: 60_000 }, async () => {
  const paths = [];
  for (const [w, h, tag] of [[1280, 900, 'desktop'], [390, 844, 'phone']]) {
    await main.setViewportSize({ width: w, height: h });
    for (const scheme of ['light', 'dark']) {
      await main.emulateMedia({ colorScheme: scheme });
      paths.push(await shot(main, `answer-${tag}-${scheme}`));
    }
  }
  // Nothing wider than the phone screen (no sideways scrolling).
  await main.setViewportSize({ width: 390, height: 844 });
  const overflow = await main.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a 390px phone`);
  await main.setViewportSize({ width: 1280, height: 900 });
  await main.emulateMedia({ colorScheme: 'light' });
  console.log(`screenshots: ${paths.join(', ')}`);
});

test('the stop button aborts mid-answer and the model stays usable', { timeout: 120_000 }, async () => {
  await settings(main, { maxNewTokens: 256, temperature: 0 });
  await main.fill('#instruction', 'Describe this image.');
  await main.click('#ask-button');
  await main.waitForFunction(() => (document.getElementById('answer').textContent ?? '').trim().length > 0, null, { timeout: 60_000 });
  await main.click('#stop-button');
  const run = await waitAnswer(main);
  assert.equal(run.stopped, true, 'stopped');
  assert.ok(run.text.length < NATIVE_ANSWER.length, `stopped early: ${JSON.stringify(run.text)}`);
  assert.match(run.shown, /stopped/);
  assert.equal(await main.locator('#notice').isVisible(), false, 'no error for a stop');
  assert.equal(await main.locator('#stop-button').isDisabled(), true);
  // Still answers.
  await settings(main, { maxNewTokens: 32 });
  const again = await ask(main, 'Describe this image.');
  assert.equal(again.text.trim(), NATIVE_ANSWER);
});

test('a file that is not a picture gives the friendly error', { timeout: 60_000 }, async () => {
  await main.setInputFiles('#file-input', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not a picture\n') });
  await main.waitForSelector('#notice:not([hidden])');
  assert.equal(await main.locator('#notice').getAttribute('data-code'), 'bad-input');
  assert.match(await main.locator('#notice-title').innerText(), /not a picture/);
  await main.click('#notice-dismiss');
  // A text file that claims to be a PNG: the same.
  await main.setInputFiles('#file-input', { name: 'fake.png', mimeType: 'image/png', buffer: Buffer.from('this is text, not PNG data') });
  await main.waitForSelector('#notice:not([hidden])');
  assert.equal(await main.locator('#notice').getAttribute('data-code'), 'bad-input');
  await shot(main, 'error-not-a-picture');
  await main.click('#notice-dismiss');
  // The previous picture is still the one in use.
  assert.equal(await main.evaluate(() => window.llamaDemo.state.picture?.name), 'shapes-1.png');
});

test('pictures arrive by drop and by paste too', { timeout: 60_000 }, async () => {
  const route = async (kind, example) =>
    main.evaluate(
      async ({ kind, example }) => {
        const blob = await (await fetch(`models/default/examples/${example}`)).blob();
        const dt = new DataTransfer();
        dt.items.add(new File([blob], example, { type: 'image/png' }));
        if (kind === 'paste') document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
        else document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      },
      { kind, example },
    );
  await route('drop', 'shapes-3.png');
  await main.waitForFunction(() => window.llamaDemo.state.picture?.name === 'shapes-3.png');
  await route('paste', 'shapes-2.png');
  await main.waitForFunction(() => window.llamaDemo.state.picture?.name === 'shapes-2.png');
  assert.equal(await main.locator('#notice').isVisible(), false);
  await pickExample(main, 0);
  // Picking reads the file asynchronously: wait for it rather than race it.
  await main.waitForFunction(() => window.llamaDemo.state.picture?.name === 'shapes-1.png', null, { timeout: 10_000 });
});

test('a prompt over the context gives the friendly error', { timeout: 60_000 }, async () => {
  await settings(main, { maxNewTokens: 64 });
  await main.fill('#instruction', 'shape colour circle '.repeat(400));
  await main.click('#ask-button');
  await main.waitForSelector('#notice:not([hidden])', { timeout: 60_000 });
  assert.equal(await main.locator('#notice').getAttribute('data-code'), 'context-overflow');
  assert.match(await main.locator('#notice-text').innerText(), /512 tokens/);
  await main.click('#notice-dismiss');
});

test('a lost GPU device shows "Reload model", which brings the model back', { timeout: 120_000 }, async () => {
  await main.evaluate(() => window.llamaDemo.loseDevice());
  await main.fill('#instruction', 'How many shapes are there?');
  await main.click('#ask-button');
  await main.waitForSelector('#notice:not([hidden])', { timeout: 60_000 });
  assert.equal(await main.locator('#notice').getAttribute('data-code'), 'device-lost');
  assert.equal(await main.locator('#notice-action').innerText(), 'Reload model');
  await shot(main, 'error-device-lost');
  await main.click('#notice-action');
  await waitForPage(main, () => document.body.dataset.model === 'ready' && document.body.dataset.loading !== 'true', { timeout: 120_000, what: 'the reload' });
  assert.equal(await main.evaluate(() => window.llamaDemo.state.lastLoad.fromCache), true, 'reloaded from the cache');
  await settings(main, { maxNewTokens: 32, temperature: 0 });
  const run = await ask(main, 'Describe this image.');
  assert.equal(run.text.trim(), NATIVE_ANSWER);
});

test('model picker: same base, another adapter URL swaps the adapter only; a bad URL is a friendly error', { timeout: 120_000 }, async () => {
  await main.check('#model-custom');
  await main.fill('#base-url', url('models/default/base/manifest.json'));
  await main.fill('#adapter-url', url('models/default/adapter/manifest.json?copy=2'));
  assert.equal(await main.locator('#load-button').innerText(), 'Swap adapter');
  requests.length = 0;
  await loadModel(main);
  const load = await main.evaluate(() => window.llamaDemo.state.lastLoad);
  assert.equal(load.swap, true, 'setAdapter was used');
  assert.ok(requests.some((u) => u.startsWith('/models/default/adapter/manifest.json')), `adapter manifest fetched: ${requests}`);
  assert.deepEqual(requests.filter((u) => u.startsWith('/models/default/base/')), [], 'nothing of the base fetched');
  assert.match(await main.locator('#model-info').innerText(), /copy=2/);
  await settings(main, { maxNewTokens: 32, temperature: 0 });
  const run = await ask(main, 'Describe this image.');
  assert.equal(run.text.trim(), NATIVE_ANSWER);

  // A URL with no model behind it.
  await main.fill('#base-url', url('models/nothing-here/manifest.json'));
  await main.click('#load-button');
  await main.waitForSelector('#notice:not([hidden])', { timeout: 60_000 });
  assert.equal(await main.locator('#notice').getAttribute('data-code'), 'network');
  assert.match(await main.locator('#notice-title').innerText(), /download failed/i);
  await shot(main, 'error-bad-url');
  await main.click('#notice-dismiss');
  // The bad model was vetted (LlamaAdapter.check) before the one in use was let go: it still answers.
  assert.equal(await main.evaluate(() => document.body.dataset.model), 'ready');
  const still = await ask(main, 'Describe this image.');
  assert.equal(still.text.trim(), NATIVE_ANSWER);
  // Back to the built-in model.
  await main.check('#model-default');
  await loadModel(main);
  await pickExample(main, 0);
});

test('keyboard only: tab order reaches every control, and a question can be asked', { timeout: 180_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const page = await openPage(context);
    const order = [];
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      order.push(await page.evaluate(() => {
        const a = document.activeElement;
        return a?.id || (a?.classList.contains('example') ? `example:${a.dataset.src.split('/').pop()}` : a?.classList.contains('chip') ? `chip:${a.textContent}` : a?.tagName === 'SUMMARY' ? `summary:${a.parentElement.id}` : a?.tagName);
      }));
    }
    const expect = ['model-default', 'load-button', 'pick-file', 'camera-button', 'example:shapes-1.png', 'instruction', 'chip:Describe this image.', 'summary:input-details', 'summary:settings', 'ask-button', 'storage-refresh'];
    let at = -1;
    for (const id of expect) {
      const i = order.indexOf(id, at + 1);
      assert.ok(i > at, `focus reaches ${id} after ${expect[expect.indexOf(id) - 1] ?? 'the start'} (order: ${order.join(', ')})`);
      at = i;
    }
    // Every focused control shows a focus ring.
    await page.focus('#load-button');
    const ring = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(ring, 'none');

    // The flow, keys only: Load, an example, the instruction, Enter.
    const tabTo = async (test, max = 60) => {
      for (let i = 0; i < max; i++) {
        if (await page.evaluate(test)) return;
        await page.keyboard.press('Tab');
      }
      throw new Error(`focus never reached ${test}`);
    };
    await page.evaluate(() => document.activeElement?.blur());
    await tabTo(() => document.activeElement?.id === 'load-button');
    await page.keyboard.press('Enter');
    await waitForPage(page, () => document.body.dataset.model === 'ready' && document.body.dataset.loading !== 'true', { timeout: 120_000, what: 'the model' });
    await tabTo(() => document.activeElement?.classList.contains('example') && document.activeElement.dataset.src.endsWith('shapes-2.png'));
    await page.keyboard.press('Enter');
    await waitForPage(page, () => document.body.dataset.picture === 'set', { timeout: 20_000, what: 'the picture' });
    await tabTo(() => document.activeElement?.id === 'instruction');
    await page.keyboard.press('ControlOrMeta+A');
    await page.keyboard.type('How many shapes are there?');
    await page.keyboard.press('Enter');
    const run = await waitAnswer(page);
    assert.ok(run.text.trim().length > 0, 'answered');
    assert.match(run.text, /\b(one|two|three|four|five|six|\d)\b/i, `a count: ${run.text}`);
    // Screen reader plumbing.
    assert.equal(await page.locator('#answer').getAttribute('aria-live'), 'polite');
    assert.equal(await page.locator('#status').getAttribute('role'), 'status');
  } finally {
    await context.close();
  }
});

test('no WebGPU: the page says which browsers and flags give it', { timeout: 60_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    await context.addInitScript(() => {
      Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined, configurable: true });
    });
    const page = await openPage(context, url(), { expectError: true });
    await page.waitForSelector('#notice:not([hidden])');
    assert.equal(await page.locator('#notice').getAttribute('data-code'), 'no-webgpu');
    const text = await page.locator('#notice').innerText();
    for (const word of ['Chrome', 'Edge', 'Safari', 'Firefox', 'enable-unsafe-webgpu']) assert.ok(text.includes(word), `mentions ${word}`);
    assert.equal(await page.locator('#load-button').isDisabled(), true);
    await shot(page, 'error-no-webgpu');
  } finally {
    await context.close();
  }
});

test('offline: after one visit the page loads from the service worker and answers again', { timeout: 180_000 }, async () => {
  await swReady(main);
  const names = await main.evaluate(() => caches.keys());
  assert.ok(names.includes(MODEL_CACHE), `model cache present: ${names}`);
  assert.ok(names.some((n) => n.startsWith('llama-adapter-web-shell-')), `shell cache present: ${names}`);
  // The network goes away: offline in the browser, and the server itself stopped.
  await mainContext.setOffline(true);
  await server.close();
  try {
    await main.reload();
    await waitForPage(main, () => document.body.dataset.ready === 'true', { timeout: 60_000, what: 'the offline page' });
    assert.equal(await main.evaluate(() => !!navigator.serviceWorker.controller), true);
    const load = await loadModel(main);
    assert.equal(load.fromCache, true, 'model from the cache');
    await pickExample(main, 0);
    await settings(main, { maxNewTokens: 32, temperature: 0 });
    const run = await ask(main, 'Describe this image.');
    assert.equal(run.text.trim(), NATIVE_ANSWER);
    await shot(main, 'offline-answer');
  } finally {
    server = await serve({ root: WWW, port, onRequest });
    await mainContext.setOffline(false);
  }
});

test('storage panel lists the model cache and deleting it empties it', { timeout: 60_000 }, async () => {
  await main.click('#storage-refresh');
  await main.waitForFunction((name) => !!document.querySelector(`#storage-list li[data-cache="${name}"]`), MODEL_CACHE);
  const listed = await main.locator(`#storage-list li[data-cache="${MODEL_CACHE}"]`).innerText();
  for (const f of ['base/manifest.json', 'base/shard-000.bin', 'base/tokenizer.json', 'adapter/manifest.json', 'adapter/shard-000.bin']) assert.ok(listed.includes(f), `lists ${f}`);
  assert.match(listed, /MB/);
  assert.match(await main.locator('#storage-summary').innerText(), /Models: 18\.\d MB in [56] files/);
  await main.click('#storage-delete');
  await main.waitForFunction(() => document.getElementById('storage-summary').dataset.modelFiles === '0');
  assert.match(await main.locator('#storage-summary').innerText(), /No models downloaded/);
  const left = await main.evaluate(async (name) => ((await caches.keys()).includes(name) ? (await (await caches.open(name)).keys()).length : 0), MODEL_CACHE);
  assert.equal(left, 0);
  await mainContext.close();
});

test('update banner: a changed shell file or a new service worker is picked up, old caches go', { timeout: 120_000 }, async () => {
  // A copy of www/ to change: links to everything, real copies of the files we edit.
  const root = mkdtempSync(join(tmpdir(), 'demo-www-'));
  for (const name of readdirSync(WWW)) {
    if (name === 'app.css' || name === 'sw.js') copyFileSync(join(WWW, name), join(root, name));
    else symlinkSync(join(WWW, name), join(root, name));
  }
  const copy = await serve({ root, port: 0 });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const page = await openPage(context, copy.url);
    await swReady(page);
    await page.reload();
    await waitForPage(page, () => document.body.dataset.ready === 'true', { what: 'the page' });
    assert.equal(await page.locator('#update-banner').isVisible(), false);

    // 1. A shell file changes on the server (www/pkg rebuilt, say): banner, then the new file.
    writeFileSync(join(root, 'app.css'), `${readFileSync(join(root, 'app.css'), 'utf8')}\n/* update-test-1 */\n`);
    await page.reload();
    await page.waitForSelector('#update-banner:not([hidden])', { timeout: 60_000 });
    // Until the update is taken, the old file is served (no mixing).
    assert.doesNotMatch(await page.evaluate(() => fetch('app.css').then((r) => r.text())), /update-test-1/);
    await shot(page, 'update-banner');
    await Promise.all([page.waitForEvent('load'), page.click('#update-reload')]);
    await waitForPage(page, () => document.body.dataset.ready === 'true', { what: 'the updated page' });
    assert.match(await page.evaluate(() => fetch('app.css').then((r) => r.text())), /update-test-1/);
    // The old shell cache is deleted in the background after the switch: wait for it.
    const shellCaches = async () => {
      let names = [];
      for (let i = 0; i < 50; i++) {
        names = (await page.evaluate(() => caches.keys())).filter((n) => n.startsWith('llama-adapter-web-shell-'));
        if (names.length === 1) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      return names;
    };
    let shells = await shellCaches();
    assert.equal(shells.length, 1, `one shell cache: ${shells}`);

    // 2. A new service worker (its version bumped): banner, reload, old caches deleted.
    writeFileSync(join(root, 'sw.js'), readFileSync(join(root, 'sw.js'), 'utf8').replace(/const SW_VERSION = '[^']*'/, "const SW_VERSION = 'update-test-2'"));
    await page.evaluate(async () => (await navigator.serviceWorker.getRegistration()).update());
    await page.waitForSelector('#update-banner:not([hidden])', { timeout: 60_000 });
    await Promise.all([page.waitForEvent('load'), page.click('#update-reload')]);
    await waitForPage(page, () => document.body.dataset.ready === 'true', { what: 'the page after the new worker' });
    shells = await shellCaches();
    assert.equal(shells.length, 1, `one shell cache: ${shells}`);
    assert.match(shells[0], /^llama-adapter-web-shell-update-test-2-/);
  } finally {
    await context.close();
    await copy.close();
    rmSync(root, { recursive: true, force: true });
  }
});

test('the page has the PWA pieces: manifest, icons, charset', { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const res = await context.request.get(url('manifest.webmanifest'));
    assert.match(res.headers()['content-type'], /application\/manifest\+json/);
    const manifest = await res.json();
    assert.equal(manifest.display, 'standalone');
    assert.equal(manifest.start_url, './');
    for (const size of ['192x192', '512x512']) {
      const icon = manifest.icons.find((i) => i.sizes === size);
      assert.ok(icon, `icon ${size}`);
      const r = await context.request.get(url(icon.src));
      assert.equal(r.status(), 200);
      const png = await r.body();
      assert.equal(png.readUInt32BE(16), Number(size.split('x')[0]), `${icon.src} is ${size}`);
    }
    const wasm = await context.request.get(url('pkg/llama_adapter_web_bg.wasm'));
    assert.equal(wasm.headers()['content-type'], 'application/wasm');
    const html = await (await context.request.get(url())).text();
    assert.match(html, /<meta charset="utf-8">/);
    assert.match(html, /<link rel="manifest" href="manifest.webmanifest">/);
    await page.goto(url());
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 60_000 });
    assert.equal(await pageError(page), null);
    // Chromium's own installability check (manifest, icons, service worker with a fetch handler).
    await swReady(page);
    const cdp = await context.newCDPSession(page);
    const { installabilityErrors } = await cdp.send('Page.getInstallabilityErrors');
    // (Playwright's contexts are incognito profiles, which Chromium never offers to install.)
    const blocking = installabilityErrors.filter((e) => e.errorId !== 'in-incognito');
    assert.deepEqual(blocking, [], JSON.stringify(installabilityErrors));
    const { errors } = await cdp.send('Page.getAppManifest');
    assert.deepEqual(errors, [], JSON.stringify(errors));
    assert.equal(await page.evaluate(() => document.characterSet), 'UTF-8');
  } finally {
    await context.close();
  }
});
