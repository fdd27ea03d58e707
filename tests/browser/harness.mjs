// Shared setup of the browser tests: the native tool (for the expected
// outputs), the converted fixture models, the static server, the browser.

import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const WWW = path.join(ROOT, 'www');
export const BIN = path.join(ROOT, 'target/release/llama-adapter');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan'];
export const COMMON_ARGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const TINY = path.join(ROOT, 'tests/fixtures/tiny');

export const PROMPTS = {
  default: { image: 'www/models/default/examples/shapes-1.png', prompt: 'Describe this image.', maxNewTokens: 32 },
  lora: { image: 'tests/fixtures/images/franz-kafka.jpg', prompt: 'What is in this picture?', maxNewTokens: 24 },
};

export function requireBinary() {
  if (!fs.existsSync(BIN)) {
    throw new Error(`${path.relative(ROOT, BIN)} is missing: run \`cargo build --release\` first (the browser tests compare with the native tool)`);
  }
  if (!fs.existsSync(path.join(WWW, 'pkg/llama_adapter_web.js')) || !fs.existsSync(path.join(WWW, 'pkg/llama_adapter_web_bg.wasm'))) {
    throw new Error('www/pkg/llama_adapter_web.js / _bg.wasm are missing: build the wasm package first (wasm-bindgen --target web --out-dir www/pkg)');
  }
}

function run(args) {
  return execFileSync(BIN, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

function nativeGenerate(modelDir, { image, prompt, maxNewTokens }) {
  const out = run(['generate', '--model', modelDir, '--image', image, '--prompt', prompt, '--max-new-tokens', String(maxNewTokens), '--temperature', '0', '--json']);
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (!line) throw new Error(`llama-adapter generate printed no JSON line:\n${out}`);
  const j = JSON.parse(line);
  return { generatedIds: j.generated_ids, promptIds: j.prompt_ids, text: j.text };
}

let fixturesMemo = null;

/**
 * Converted LoRA + bias packages (many 64 KiB shards) and the native outputs,
 * in a temp folder reused while the binary and the fixtures are unchanged.
 */
export function fixtures() {
  if (fixturesMemo) return fixturesMemo;
  requireBinary();
  const stamp = [BIN, path.join(TINY, 'adapter_lora.pth'), path.join(TINY, 'adapter_bias.pth'), path.join(WWW, 'models/default/base/manifest.json'), path.join(WWW, 'models/default/adapter/manifest.json')]
    .map((f) => {
      const s = fs.statSync(f);
      return `${s.size}-${Math.round(s.mtimeMs)}`;
    })
    .join('_');
  const dir = path.join(os.tmpdir(), 'llama-adapter-web-browser-tests', stamp.replace(/[^0-9_-]/g, ''));
  const done = path.join(dir, 'fixtures.json');
  if (fs.existsSync(done)) {
    fixturesMemo = JSON.parse(fs.readFileSync(done, 'utf8'));
    return fixturesMemo;
  }
  // Fixtures of older binaries are stale: drop them.
  for (const old of fs.existsSync(path.dirname(dir)) ? fs.readdirSync(path.dirname(dir)) : []) {
    if (old !== 'mock') fs.rmSync(path.join(path.dirname(dir), old), { recursive: true, force: true });
  }
  fs.mkdirSync(dir, { recursive: true });
  const convert = (adapter, out) =>
    run([
      'convert', '--llama-dir', path.join(TINY, 'llama'), '--clip', path.join(TINY, 'clip.pth'), '--adapter', path.join(TINY, adapter),
      '--quant', 'f32', '--v-num-heads', '2', '--channel-order', 'rgb', '--shard-bytes', '65536', '--out', out, '--quiet',
    ]);
  const lora = path.join(dir, 'lora');
  const bias = path.join(dir, 'bias');
  convert('adapter_lora.pth', lora);
  convert('adapter_bias.pth', bias);
  const result = {
    dir,
    lora,
    bias,
    native: {
      default: nativeGenerate(path.join(WWW, 'models/default'), PROMPTS.default),
      lora: nativeGenerate(lora, PROMPTS.lora),
      bias: nativeGenerate(bias, PROMPTS.lora),
    },
  };
  fs.writeFileSync(done, JSON.stringify(result, null, 1));
  fixturesMemo = result;
  return result;
}

export function sha256(bytes) {
  return sha(bytes);
}

function sha(bytes) {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

/** Starts the server: www/ at /, the test page at /test/, extra mounts as given. */
export async function serve(extraMounts = {}) {
  const mounts = { '/': WWW, '/test/': path.join(ROOT, 'tests/browser'), '/fixtures/': path.join(ROOT, 'tests/fixtures'), ...extraMounts };
  return startServer({ mounts });
}

export async function launch({ webgpu = true, extraArgs = [] } = {}) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...COMMON_ARGS, ...(webgpu ? WEBGPU_ARGS : []), ...extraArgs] });
}

/** A page of `context` on the test page, with console errors collected (page.errors). */
export async function openPage(context, server, { initScript } = {}) {
  const page = await context.newPage();
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[pageerror] ${e.message}`));
  if (initScript) await page.addInitScript(initScript);
  await page.goto(server.url('/test/page.html'));
  await page.waitForFunction(() => window.testPageReady === true, null, { timeout: 30_000 });
  return page;
}

/** Calls window.T[name](...args); resolves to the value, or rejects with an Error carrying .code. */
export async function call(page, name, ...args) {
  const r = await page.evaluate(([n, a]) => window.T[n](...a), [name, args]);
  if (r.ok) return r.value;
  const e = new Error(`${name}: [${r.error.code}] ${r.error.message}`);
  Object.assign(e, r.error);
  throw e;
}

/** Like call, but resolves to the { ok, value | error } record (for expected failures). */
export async function attempt(page, name, ...args) {
  return page.evaluate(([n, a]) => window.T[n](...a), [name, args]);
}

/** Server paths of a package's shard files (tokenizer included for a base). */
export function packageFiles(dir) {
  const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  const files = m.shards.map((s) => s.file);
  if (m.tokenizer) files.push(m.tokenizer.file);
  return { manifest: m, files };
}

export const MiB = 1024 * 1024;

/** Asserts browser ids equal the native tool's. */
export function assertSameIds(assert, got, native, what) {
  assert.ok(Array.isArray(native) && native.length > 0, `${what}: the native tool gave ids`);
  assert.deepEqual(got, native, `${what}: token ids equal the native tool's`);
}

/** Checks one load's progress events; returns the set of phases seen. */
export function checkProgress(assert, events, totalBytes) {
  assert.ok(events.length > 0, 'progress events');
  let last = 0;
  for (const e of events) {
    assert.ok(['download', 'cache', 'verify', 'upload', 'compile', 'ready'].includes(e.phase), `phase ${e.phase}`);
    assert.equal(e.totalBytes, totalBytes, 'totalBytes constant and equal to the plan total');
    assert.ok(e.loadedBytes >= last, `loadedBytes never decreases (${last} → ${e.loadedBytes})`);
    assert.ok(e.loadedBytes <= e.totalBytes, 'loadedBytes ≤ totalBytes');
    assert.equal(typeof e.fromCache, 'boolean');
    if (e.shard) assert.ok(['base', 'adapter'].includes(e.shard.package) && typeof e.shard.file === 'string' && typeof e.shard.bytes === 'number');
    last = e.loadedBytes;
  }
  const end = events.at(-1);
  assert.equal(end.phase, 'ready', 'the last event is ready');
  assert.equal(end.loadedBytes, end.totalBytes, 'ready with loadedBytes === totalBytes');
  assert.equal(events.filter((e) => e.phase === 'ready').length, 1, 'one ready event');
  return new Set(events.map((e) => e.phase));
}
