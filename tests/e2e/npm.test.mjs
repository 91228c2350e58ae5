// The npm package end to end: `bash scripts/pack-npm.sh` builds and packs it, the tarball is
// installed into a scratch project (`npm install <tarball>`, offline: it has no
// dependencies), and the README's example — the first ```js block of the INSTALLED README,
// verbatim — runs in headless Chromium (WebGPU on SwiftShader) against the seeded tiny model,
// importing 'edge-llm' through an import map. Checks that the loss fell, text was generated
// and an adapter was exported.
// Then the package as a consumer sees it: the exact list of packed files, the types compiled
// under `tsc --strict` (the README example as TypeScript, and a misuse that must not
// compile), and the ESM import in Node (tuning the tiny model on the CPU engine).
// Needs www/models/tiny.gguf (scripts/test.sh writes it; made here with the CLI if missing).

import { test, before, after } from 'node:test';
import { ROOT, TINY, serve, launchBrowser, ensureTinyModel } from './harness.mjs';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const TIMEOUT_MS = 240_000;

// The same repetitive text as the page's tuning test: the tiny model learns it quickly.
const TEXT = Array.from({ length: 60 }, (_, i) =>
  `The cat sat on the mat and the dog sat on the rug. Line ${i % 6} of the song.\n`).join('');

let server, browser, base, scratch, tarball;

before(async () => {
  ensureTinyModel();
  // Build and pack (the wasm build is skipped when www/pkg is up to date).
  const out = execFileSync('bash', [path.join(ROOT, 'scripts', 'pack-npm.sh')], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  tarball = out.trim().split('\n').pop();
  assert.ok(tarball.endsWith('.tgz') && fs.existsSync(tarball), `pack-npm.sh printed ${tarball}`);

  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'edge-llm-npm-'));
  fs.writeFileSync(path.join(scratch, 'package.json'),
    JSON.stringify({ name: 'scratch', private: true, type: 'module' }, null, 2));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--silent', tarball],
    { cwd: scratch, stdio: 'inherit' });
  const installed = path.join(scratch, 'node_modules', 'edge-llm');
  const pkg = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
  const cargoVersion = fs.readFileSync(path.join(ROOT, 'Cargo.toml'), 'utf8').match(/^version = "(.+)"$/m)[1];
  assert.equal(pkg.name, 'edge-llm');
  assert.equal(pkg.version, cargoVersion);
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.license, 'MIT OR Apache-2.0');
  for (const f of [pkg.main, pkg.types, 'pkg/edge_llm.d.ts', 'pkg/edge_llm_bg.wasm']) {
    assert.ok(fs.existsSync(path.join(installed, f)), `the package has ${f}`);
  }

  // The README's example, verbatim, as the page's module script.
  const readme = fs.readFileSync(path.join(installed, 'README.md'), 'utf8');
  const example = readme.match(/```js\n([\s\S]*?)```/)?.[1];
  assert.ok(example && example.includes("from 'edge-llm'"), 'the README has a js example importing edge-llm');
  fs.writeFileSync(path.join(scratch, 'example.js'), example);
  fs.writeFileSync(path.join(scratch, 'index.html'), `<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<script type="importmap">{"imports": {"edge-llm": "./node_modules/edge-llm/index.js"}}</script>
<script type="module" src="example.js"></script></head><body></body></html>
`);
  fs.copyFileSync(TINY, path.join(scratch, 'model.gguf'));
  fs.writeFileSync(path.join(scratch, 'train.txt'), TEXT);

  // A consumer's page (with its own inline import map), not edge-llm's: no edge-llm CSP.
  ({ server, base } = await serve(scratch, { csp: false }));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

test('the npm package: the README example tunes, evaluates, generates and exports in the browser', async () => {
  const page = await browser.newPage();
  const errors = [];
  const logs = [];
  let resolveResult;
  const result = new Promise((r) => { resolveResult = r; });
  page.on('pageerror', (e) => { errors.push(String(e)); resolveResult(null); });
  page.on('console', async (m) => {
    if (m.type() === 'error') errors.push(m.text());
    logs.push(m.text());
    const arg = m.args()[0];
    if (!arg) return;
    const v = await arg.jsonValue().catch(() => null);
    if (v && typeof v === 'object' && 'firstLoss' in v) resolveResult(v);
  });
  try {
    await page.goto(base);
    let timer;
    const r = await Promise.race([
      result,
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('no result within the timeout')), TIMEOUT_MS); }),
    ]).finally(() => clearTimeout(timer));  // a pending timer would keep node alive for TIMEOUT_MS
    assert.ok(r, `the example failed:\n${errors.join('\n')}\n${logs.slice(-20).join('\n')}`);
    console.log(`README example: loss ${r.firstLoss.toFixed(3)} → ${r.lastLoss.toFixed(3)}, perplexity ` +
      `${r.perplexity.toFixed(3)}, reply ${JSON.stringify(r.reply)} at ${r.tokensPerSecond.toFixed(1)} tokens/s, ` +
      `adapter ${r.adapterBytes} bytes`);
    assert.ok(r.lastLoss < r.firstLoss - 1, `the loss fell: ${r.firstLoss} → ${r.lastLoss}`);
    assert.ok(Number.isFinite(r.perplexity) && r.perplexity > 1, `perplexity ${r.perplexity}`);
    assert.ok(typeof r.reply === 'string' && r.reply.length > 0, 'text was generated');
    assert.ok(r.adapterBytes > 0 && r.adapterConfig === 'LORA', 'a PEFT adapter was exported');
    assert.ok(logs.some((l) => /^step 20\/20: loss /.test(l)), 'the progress callback ran each step');
    assert.deepEqual(errors, [], 'no errors in the page');
  } finally {
    await page.close();
  }
});

test('the packed files are exactly the wrapper, its types, both wasm modules and the licences', () => {
  const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).trim().split('\n')
    .map((f) => f.replace(/^package\//, '').replace(/wasm-bindgen-rayon-[0-9a-f]+/, 'wasm-bindgen-rayon-*'))
    .sort();
  const module = ['edge_llm.js', 'edge_llm_bg.wasm', 'edge_llm.d.ts', 'edge_llm_bg.wasm.d.ts'];
  assert.deepEqual(files, [
    'LICENSE-APACHE', 'LICENSE-MIT', 'README.md', 'index.d.ts', 'index.js', 'package.json',
    ...module.map((f) => `pkg/${f}`),
    ...module.map((f) => `pkg-threads/${f}`),
    'pkg-threads/snippets/wasm-bindgen-rayon-*/src/workerHelpers.no-bundler.js',
  ].sort());
});

test('the types compile under tsc --strict: the README example as TypeScript, and a misuse fails', () => {
  const tsc = path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules', '.bin', 'tsc');
  const readme = fs.readFileSync(path.join(scratch, 'node_modules', 'edge-llm', 'README.md'), 'utf8');
  fs.writeFileSync(path.join(scratch, 'example.ts'), readme.match(/```js\n([\s\S]*?)```/)[1]);
  fs.writeFileSync(path.join(scratch, 'misuse.ts'), `import { loadModel } from 'edge-llm';
const model = await loadModel('model.gguf');
await model.tuner({ text: 42, kind: 'text' });
export {};
`);
  const compile = (file) => {
    fs.writeFileSync(path.join(scratch, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext',
        target: 'es2022', lib: ['es2022', 'dom'] },
      files: [file],
    }));
    try {
      execFileSync(tsc, ['-p', 'tsconfig.json'], { cwd: scratch, encoding: 'utf8', stdio: 'pipe' });
      return '';
    } catch (e) {
      return `${e.stdout}${e.stderr}` || String(e);
    }
  };
  assert.equal(compile('example.ts'), '', 'the README example compiles under --strict');
  const misuse = compile('misuse.ts');
  assert.match(misuse, /misuse\.ts.*error TS2322/, 'a number where the text goes does not compile');
});

test('the ESM import in Node: init from bytes, tune the tiny model on the CPU engine', () => {
  fs.writeFileSync(path.join(scratch, 'node-check.mjs'), `import fs from 'node:fs';
import { init, loadModel, cpuThreads } from 'edge-llm';
await init(fs.readFileSync(new URL('./node_modules/edge-llm/pkg/edge_llm_bg.wasm', import.meta.url)));
const threads = await cpuThreads();
const model = await loadModel(new Uint8Array(fs.readFileSync('model.gguf')));
const tuner = await model.tuner({ text: fs.readFileSync('train.txt', 'utf8'), kind: 'text',
  options: { steps: 6, lr: 0.01, seq_len: 32, lora_rank: 4, accum: 1, device: 'cpu' } });
const losses = [];
await tuner.run({ onStep: (r) => losses.push(r.loss) });
console.log(JSON.stringify({ losses, device: tuner.device, threads }));
`);
  const out = execFileSync('node', ['node-check.mjs'], { cwd: scratch, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const r = JSON.parse(out.trim().split('\n').pop());
  console.log(`Node: ${r.device} engine (${r.threads.note}), loss ${r.losses[0].toFixed(3)} → ${r.losses.at(-1).toFixed(3)}`);
  assert.equal(r.device, 'cpu');
  assert.equal(r.losses.length, 6);
  assert.ok(r.losses.at(-1) < r.losses[0], 'the loss fell');
});
