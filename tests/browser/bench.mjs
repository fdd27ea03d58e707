#!/usr/bin/env node
// Runs www/bench.html in headless Chromium (WebGPU on SwiftShader unless
// --gpu-args says otherwise) against a model folder and prints its JSON.
//
//   node tests/browser/bench.mjs --model <dir with base/ and adapter/> [--prompt 128] [--new 32]
//        [--image file.png] [--chromium /usr/bin/chromium] [--timeout 600] [--headed] [--profile]
//
// e.g. after `target/release/llama-adapter bench write-model --out /tmp/bench-model`:
//   node tests/browser/bench.mjs --model /tmp/bench-model

import path from 'node:path';
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { COMMON_ARGS, ROOT, WEBGPU_ARGS, WWW } from './harness.mjs';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(WWW, 'models/default') },
    prompt: { type: 'string', default: '128' },
    new: { type: 'string', default: '32' },
    image: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    timeout: { type: 'string', default: '600' },
    headed: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'no-swiftshader': { type: 'boolean', default: false },
  },
});

const model = path.resolve(values.model);
for (const p of ['base/manifest.json', 'adapter/manifest.json']) {
  if (!fs.existsSync(path.join(model, p))) {
    console.error(`${path.join(model, p)} is missing: --model must hold base/ and adapter/ (e.g. from \`llama-adapter bench write-model --out DIR\`)`);
    process.exit(2);
  }
}
if (!fs.existsSync(path.join(WWW, 'pkg/llama_adapter_web_bg.wasm'))) {
  console.error('www/pkg is missing: build the wasm package first');
  process.exit(2);
}

const mounts = { '/': WWW, '/bench-model/': model };
if (values.image) mounts['/bench-image/'] = path.dirname(path.resolve(values.image));
const server = await startServer({ mounts });
const gpuArgs = values['no-swiftshader'] ? ['--enable-unsafe-webgpu', '--enable-features=Vulkan'] : WEBGPU_ARGS;
const browser = await chromium.launch({ executablePath: values.chromium, headless: !values.headed, args: [...COMMON_ARGS, ...gpuArgs] });
let code = 0;
try {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.error(`[page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  const q = new URLSearchParams({
    base: '/bench-model/base/manifest.json',
    adapter: '/bench-model/adapter/manifest.json',
    prompt: values.prompt,
    new: values.new,
  });
  if (values.profile) q.set('profile', '1');
  if (values.image) q.set('image', `/bench-image/${path.basename(values.image)}`);
  await page.goto(server.url(`/bench.html?${q}`));
  await page.waitForFunction(() => window.benchResult || window.benchError, null, { timeout: Number(values.timeout) * 1000, polling: 500 });
  const { result, error } = await page.evaluate(() => ({ result: window.benchResult ?? null, error: window.benchError ?? null }));
  if (error) {
    console.error(`bench failed: [${error.code}] ${error.message}`);
    code = 1;
  } else {
    console.log(JSON.stringify(result, null, 2));
  }
} finally {
  await browser.close();
  await server.close();
}
process.exit(code);
