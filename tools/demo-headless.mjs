#!/usr/bin/env node
// Drives the demo page in headless Chromium (software WebGPU through
// SwiftShader): loads the default model, picks the first example picture,
// asks "Describe this image.", waits for the answer and prints it with the
// timings. Exits non-zero with the page's own error message if anything fails.
//
//   node tools/demo-headless.mjs <url> [--screenshot FILE] [--prompt TEXT]
//        [--max-new-tokens N] [--temperature T] [--timeout SECONDS] [--chromium PATH]
//
// The defaults match tools/demo.sh's native run (greedy, 32 new tokens), so
// the two answers can be compared word for word.
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--enable-unsafe-swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--enable-features=Vulkan',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export async function loadPlaywright() {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const tries = [() => import('playwright-core'), () => import(createRequire(resolve(root, 'package.json')).resolve('playwright-core'))];
  if (process.env.PLAYWRIGHT_CORE) tries.unshift(() => import(resolve(process.env.PLAYWRIGHT_CORE)));
  for (const t of tries) {
    try {
      const m = await t();
      return m.chromium ? m : m.default;
    } catch {
      /* next */
    }
  }
  throw new Error('playwright-core is not installed: run `npm install` in the repository root (or set PLAYWRIGHT_CORE to its index.mjs)');
}

/** The page's visible error, if it shows one. */
export async function pageError(page) {
  return page.evaluate(() => {
    const n = document.getElementById('notice');
    if (!n || n.hidden) return null;
    const t = (id) => document.getElementById(id)?.textContent?.trim() ?? '';
    return { code: n.dataset.code ?? null, title: t('notice-title'), text: t('notice-text'), detail: t('notice-detail-text') };
  });
}

/** Waits until `ready()` holds in the page, or the page shows an error (then throws it). */
export async function waitForPage(page, ready, { timeout = 120_000, what = 'the page' } = {}) {
  const outcome = await page
    .waitForFunction(
      (src) => {
        const n = document.getElementById('notice');
        if (n && !n.hidden && n.dataset.code !== 'aborted') return 'error';
        // eslint-disable-next-line no-new-func
        return new Function(`return (${src})();`)() ? 'ok' : false;
      },
      ready.toString(),
      { timeout, polling: 100 },
    )
    .then((h) => h.jsonValue())
    .catch((e) => {
      throw new Error(`timed out after ${timeout / 1000} s waiting for ${what} (${e.message.split('\n')[0]})`);
    });
  if (outcome === 'error') {
    const err = await pageError(page);
    const e = new Error(`${err.title}: ${err.text}${err.detail ? ` [${err.detail}]` : ''}`);
    e.pageError = err;
    throw e;
  }
}

function parseArgs(argv) {
  const o = { url: null, screenshot: null, prompt: 'Describe this image.', maxNewTokens: 32, temperature: 0, timeout: 300, chromium: process.env.CHROMIUM ?? '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--screenshot') o.screenshot = val();
    else if (a === '--prompt') o.prompt = val();
    else if (a === '--max-new-tokens') o.maxNewTokens = Number(val());
    else if (a === '--temperature') o.temperature = Number(val());
    else if (a === '--timeout') o.timeout = Number(val());
    else if (a === '--chromium') o.chromium = val();
    else if (a === '-h' || a === '--help') {
      console.log('usage: node tools/demo-headless.mjs <url> [--screenshot FILE] [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--timeout S] [--chromium PATH]');
      process.exit(0);
    } else if (!a.startsWith('--') && !o.url) o.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.url) throw new Error('give the page URL (tools/serve.mjs prints it)');
  return o;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`demo-headless: ${e.message}`);
    process.exit(2);
  }
  const { chromium } = await loadPlaywright();
  const browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args: CHROMIUM_ARGS });
  const consoleErrors = [];
  let failed = false;
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    const t0 = Date.now();
    await page.goto(opts.url, { waitUntil: 'load' });
    await waitForPage(page, () => document.body.dataset.ready === 'true', { timeout: 60_000, what: 'the WebGPU check' });
    const gpu = await page.locator('#gpu-line').innerText();

    await page.click('#load-button');
    await waitForPage(page, () => document.body.dataset.model === 'ready' && document.body.dataset.loading !== 'true', {
      timeout: opts.timeout * 1000,
      what: 'the model to load',
    });
    const load = await page.evaluate(() => window.llamaDemo.state.lastLoad);

    await page.click('#examples .example >> nth=0');
    await waitForPage(page, () => document.body.dataset.picture === 'set', { timeout: 30_000, what: 'the example picture' });

    await page.click('#settings > summary');
    await page.fill('#max-tokens', String(opts.maxNewTokens));
    await page.fill('#temperature', String(opts.temperature));
    await page.fill('#instruction', opts.prompt);
    await page.click('#ask-button');
    await waitForPage(page, () => ['done', 'stopped', 'empty'].includes(document.body.dataset.answer) && document.body.dataset.generating === 'false', {
      timeout: opts.timeout * 1000,
      what: 'the answer',
    });
    const st = await page.evaluate(() => window.llamaDemo.state);
    const run = st.lastRun;
    if (!run || !run.text.trim()) throw new Error('the model answered nothing');

    console.log(`GPU:            ${gpu.replace(/^WebGPU ready: /, '')}`);
    console.log(`model:          ${st.modelUrls?.base} + ${st.modelUrls?.adapter}`);
    console.log(`load:           ${(load.ms / 1000).toFixed(2)} s (${load.fromCache ? 'from the cache' : 'from the network'}, ${load.bytes} bytes)`);
    console.log(`prompt:         ${opts.prompt} [${st.picture?.name}] (temperature ${opts.temperature}, max ${opts.maxNewTokens} new tokens)`);
    console.log(`answer:         ${run.text.trim()}`);
    console.log(`time to first:  ${(run.timeToFirstTokenMs / 1000).toFixed(2)} s (picture + prompt of ${run.promptTokens} tokens)`);
    console.log(`prefill:        ${run.prefillTokensPerS?.toFixed(1)} tokens/s`);
    console.log(`decode:         ${run.decodeTokensPerS?.toFixed(1)} tokens/s (${run.generatedTokens} tokens${run.stoppedAtEos ? ', stopped at end of text' : ''})`);
    console.log(`total:          ${((Date.now() - t0) / 1000).toFixed(1)} s wall`);
    if (opts.screenshot) {
      mkdirSync(dirname(resolve(opts.screenshot)), { recursive: true });
      await page.screenshot({ path: opts.screenshot, fullPage: true });
      console.log(`screenshot:     ${opts.screenshot}`);
    }
  } catch (e) {
    failed = true;
    console.error(`demo-headless: FAILED: ${e.message}`);
    if (consoleErrors.length) console.error(`page console errors:\n  ${consoleErrors.slice(-10).join('\n  ')}`);
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
