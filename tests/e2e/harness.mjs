// What the end-to-end tests share: paths, headless Chromium with WebGPU (SwiftShader) and no
// connections beyond loopback, a static server like scripts/run.sh's (python3 -m
// http.server on a free loopback port), and the seeded tiny model.

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const WWW = path.join(ROOT, 'www');
export const ARTIFACTS = path.join(HERE, 'artifacts');
export const TINY = path.join(WWW, 'models', 'tiny.gguf');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// WebGPU on SwiftShader, and no connections anywhere but the loopback server.
const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/// Serves `dir` on a free loopback port as scripts/run.sh does (cross-origin isolated, so
/// the page's workers get threads; `{ isolation: false }` serves it as a plain static host;
/// `{ csp: false }` without the page's Content-Security-Policy, for another project's page);
/// resolves to { server, base } once it answers.
export async function serve(dir, { ms = 15_000, isolation = true, csp = true } = {}) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}/`;
  const log = [];
  const args = [path.join(ROOT, 'scripts', 'serve.py'), '--directory', dir, String(port)];
  if (!isolation) args.splice(1, 0, '--no-isolation');
  if (!csp) args.splice(1, 0, '--no-csp');
  const server = spawn('python3', args, {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  server.stderr.on('data', (d) => {
    log.push(String(d));
    if (log.length > 40) log.shift();
  });
  const until = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(base);
      if (r.ok) return { server, base };
    } catch { /* not up yet */ }
    if (Date.now() > until) {
      server.kill();
      throw new Error(`server did not answer ${base} within ${ms} ms:\n${log.join('')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/// Opens every collapsed section of the page (advanced settings, device details, the
/// tokenizer viewer, compression), as a user does before changing what is inside.
export const openAll = (page) => page.evaluate(() => {
  for (const d of document.querySelectorAll('details')) d.open = true;
});

/// Waits until the page is ready (model loaded, worker started), then opens its collapsed
/// sections.
export async function ready(page) {
  await page.waitForFunction(() => document.body.dataset.ready === 'true');
  await openAll(page);
}

/// Clicks the page's "Download adapter", takes its one download (a zip), unpacks it into
/// `dir` and returns the files it held, by name ({ name: Buffer }).
export async function downloadAdapter(page, dir) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#tune-download')]);
  assert.equal(download.suggestedFilename(), 'edge-llm-adapter.zip');
  fs.mkdirSync(dir, { recursive: true });
  const zip = path.join(dir, download.suggestedFilename());
  await download.saveAs(zip);
  execFileSync('python3', ['-m', 'zipfile', '-e', zip, dir]);
  fs.rmSync(zip);
  await page.waitForSelector('#adapter-links:not([hidden])');
  return Object.fromEntries(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f))]));
}

/// `untilIn(page, boxes, options)(fn, arg)`: waits until `fn(arg)` holds in the page and
/// resolves to 'ok', or to 'error: …' as soon as an error box of `boxes` (a selector or a
/// list of them) shows a message, so that a test fails with the page's own words. `options`
/// go to waitForFunction (`timeout`, `polling`).
export function untilIn(page, boxes, options = {}) {
  const ids = Array.isArray(boxes) ? boxes : [boxes];
  // Two waits raced, each a function Playwright compiles itself: the page's
  // Content-Security-Policy forbids compiling a string in the page (eval, new Function).
  return async (fn, arg) => {
    const failed = page.waitForFunction((b) => {
      for (const id of b) {
        const err = document.querySelector(id);
        if (err && !err.hidden && err.textContent) return `error: ${err.textContent}`;
      }
      return false;
    }, ids, options).then((r) => r.jsonValue());
    const held = page.waitForFunction(fn, arg, options).then(() => 'ok');
    // The loser keeps polling until it times out or the page closes: ignore its end.
    failed.catch(() => {});
    held.catch(() => {});
    return Promise.race([failed, held]);
  };
}

/// The built CLI binary (debug or release), if any.
export const edgeLlm = () =>
  ['debug', 'release'].map((p) => path.join(ROOT, 'target', p, 'edge-llm')).find((p) => fs.existsSync(p));

/// The seeded tiny model at www/models/tiny.gguf, written by the CLI when missing.
export function ensureTinyModel() {
  if (fs.existsSync(TINY)) return;
  const bin = edgeLlm();
  assert.ok(bin, 'www/models/tiny.gguf is missing and no edge-llm binary is built: run ' +
    '`cargo run -- make-tiny --out www/models/tiny.gguf` (or `cargo build`) first');
  fs.mkdirSync(path.dirname(TINY), { recursive: true });
  execFileSync(bin, ['make-tiny', '--out', TINY], { stdio: 'inherit' });
}

/// The real default model beside the page (scripts/run.sh links it there).
export const DEFAULT_MODEL = path.join(WWW, 'models', 'default.gguf');

/// The built-in data beside the page (www/data/arc-easy, www/data/shakespeare), linked to
/// data/ as scripts/run.sh does when missing.
export function ensureWebData() {
  for (const d of ['arc-easy', 'shakespeare']) {
    const link = path.join(WWW, 'data', d);
    if (fs.existsSync(link)) continue;
    assert.ok(fs.existsSync(path.join(ROOT, 'data', d)), `data/${d} is missing: run scripts/setup.sh`);
    fs.mkdirSync(path.dirname(link), { recursive: true });
    fs.rmSync(link, { force: true });
    fs.symlinkSync(path.join('..', '..', 'data', d), link);
  }
}

/// The small text the tuning tests train on: short rows that a few steps visibly learn.
export const TEXT = Array.from({ length: 60 }, (_, i) =>
  `The cat sat on the mat and the dog sat on the rug. Line ${i % 6} of the song.\n`).join('');

// Browser (SwiftShader) vs native (Vulkan) GPU losses: |a − b| ≤ max(REL·(|a| + |b|), ABS).
export const LOSS_REL_TOL = 1e-3;
export const LOSS_ABS_TOL = 1e-3;

/// Runs the CLI (`edge-llm ARGS --json`) and returns its JSON lines, or null without a binary.
export function cliJson(args) {
  const bin = edgeLlm();
  if (!bin) return null;
  const out = execFileSync(bin, [...args, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

/// The browser run `train` ([step, loss, window?] per step) against the same run natively
/// (`edge-llm tune FLAGS --device DEVICE` on TEXT): the same steps, windows and losses within
/// |a − b| ≤ max(rel·(|a| + |b|), abs). Returns the native step objects, or null without a
/// CLI binary.
export function checkNativeSteps(flags, train, what, { device = 'gpu', rel = LOSS_REL_TOL, abs = LOSS_ABS_TOL } = {}) {
  const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'native-'));
  fs.writeFileSync(path.join(dir, 'song.txt'), TEXT);
  let native;
  try {
    native = cliJson(['tune', '--model', TINY, '--data', path.join(dir, 'song.txt'), ...flags,
      '--device', device, '--out', path.join(dir, 'run')]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (!native) {
    console.log('native cross-check skipped (no edge-llm binary)');
    return null;
  }
  const close = (a, b) => Math.abs(a - b) <= Math.max(rel * (Math.abs(a) + Math.abs(b)), abs);
  const steps = native.filter((r) => typeof r.loss === 'number');
  assert.equal(steps.length, train.length, 'steps, native vs browser');
  steps.forEach((r, i) => {
    const [s, v, w] = train[i];
    assert.ok(r.step === s && (r.window ?? null) === (w ?? null) && close(r.loss, v),
      `step ${s}: native window ${r.window} loss ${r.loss}, browser window ${w} loss ${v}`);
  });
  console.log(`native run (${what}): the same steps, windows and losses`);
  return steps;
}

/// Reads a safetensors file's header: {name: {dtype, shape, data_offsets}}.
export function safetensorsHeader(buf) {
  assert.ok(buf.length > 8, 'safetensors file too short');
  const n = Number(buf.readBigUInt64LE(0));
  assert.ok(n > 0 && 8 + n <= buf.length, `header length ${n} of a ${buf.length}-byte file`);
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const dataLen = buf.length - 8 - n;
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [a, b] = t.data_offsets;
    assert.ok(a <= b && b <= dataLen, `${name}: offsets ${a}..${b} outside ${dataLen} data bytes`);
    assert.equal(b - a, 4 * t.shape.reduce((x, y) => x * y, 1), `${name}: size of ${t.dtype} ${t.shape}`);
  }
  return header;
}
