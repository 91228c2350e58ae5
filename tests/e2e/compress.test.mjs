// Compression in the browser end to end, on the seeded TINY model: compress with LUC in the
// page (progress through calibrate → fisher → profile → compress, the calibration passes on
// WebGPU, the summary and the per-block table), download the compressed model and check it against the CLI (`edge-llm compress`
// with the same options writes the same bytes; `edge-llm perplexity` on the downloaded
// file gives the number the page shows for it), compress uniformly, compress with LUC again
// (the profile comes from the browser's cache: no profiling stage), show the cached profile
// (Profile button), refuse a bad policy
// file with a plain message while keeping everything, then tune a few steps in
// compress-then-tune mode and download the run report (its fields checked).
// Saves tests/e2e/artifacts/compress.png.
// Needs www/pkg (scripts/build-wasm.sh) and the CLI binary (`cargo build`) for the
// cross-checks; writes www/models/tiny.gguf with it when missing.

import { test, before, after } from 'node:test';
import { ready, openAll, WWW, ARTIFACTS, TINY, serve, launchBrowser, ensureTinyModel, edgeLlm, untilIn } from './harness.mjs';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const TIMEOUT_MS = 120_000;

// A small, repetitive text: the calibration data (picked as the tuning data file).
const TEXT = Array.from({ length: 60 }, (_, i) =>
  `The cat sat on the mat and the dog sat on the rug. Line ${i % 6} of the song.\n`).join('');

// The LUC run: mean sparsity 0.3 and 4 bits per weight on average, 4 calibration rows of
// 48 tokens; the same as CLI flags.
const LUC = { sparsity: '0.3', bits: '4', rows: '4', seq: '48' };
const LUC_FLAGS = ['--sparsity', '0.3', '--bits', '4', '--calib-rows', '4', '--seq-len', '48'];
// Uniform: 4 bits everywhere, Wanda at 0.3, round-to-nearest.
const UNIFORM_FLAGS = ['--allocation', 'uniform', '--sparsity', '0.3', '--bits', '4', '--method', 'wanda',
  '--quant', 'rtn', '--calib-rows', '4', '--seq-len', '48'];
const PPL_TOKENS = 128;
// The page's perplexity (GPU kernels on SwiftShader, packed weights) vs the CLI's CPU
// reference on the same file: |a − b| ≤ PPL_REL_TOL·b.
const PPL_REL_TOL = 1e-3;
const TUNE_STEPS = 4;

let server, browser, base, dir;

before(async () => {
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'edge_llm.js')), 'www/pkg is missing: run scripts/build-wasm.sh');
  ensureTinyModel();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(ARTIFACTS, 'compress-'));
  fs.writeFileSync(path.join(dir, 'song.txt'), TEXT);
  ({ server, base } = await serve(WWW));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
  // EDGE_LLM_KEEP_ARTIFACTS=1 keeps the downloads and the CLI's files for a look.
  if (dir && process.env.EDGE_LLM_KEEP_ARTIFACTS !== '1') fs.rmSync(dir, { recursive: true, force: true });
});

/// Where a GGUF file's tensor data starts (the header, metadata and tensor infos end,
/// rounded up to `general.alignment`).
function tensorDataOffset(buf) {
  let p = 8;
  const u32 = () => { const v = buf.readUInt32LE(p); p += 4; return v; };
  const u64 = () => { const v = Number(buf.readBigUInt64LE(p)); p += 8; return v; };
  const str = () => { const n = u64(); const v = buf.toString('utf8', p, p + n); p += n; return v; };
  const SIZES = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const value = (t) => {
    if (t === 8) return str();
    if (t === 9) {
      const et = u32(), n = u64();
      for (let i = 0; i < n; i++) value(et);
      return null;
    }
    const v = SIZES[t] === 4 && t === 4 ? buf.readUInt32LE(p) : null;
    p += SIZES[t];
    return v;
  };
  assert.equal(buf.toString('latin1', 0, 4), 'GGUF');
  p = 8;
  const tensors = u64(), kvs = u64();
  let align = 32;
  for (let i = 0; i < kvs; i++) {
    const key = str(), t = u32(), v = value(t);
    if (key === 'general.alignment' && v) align = v;
  }
  for (let i = 0; i < tensors; i++) {
    str();
    const nd = u32();
    p += 8 * nd + 4 + 8;
  }
  return Math.ceil(p / align) * align;
}

/// `edge-llm ARGS` → its stdout parsed as JSON (the last JSON line), or null without a binary.
function cli(args) {
  const bin = edgeLlm();
  if (!bin) return null;
  const out = execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = out.split('\n').filter((l) => l.startsWith('{'));
  return JSON.parse(lines[lines.length - 1]);
}

test('compress in the page (LUC and uniform), match the CLI, refuse a bad policy, report the run', async () => {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  const untilCmp = untilIn(page, '#cmp-error', { timeout: TIMEOUT_MS });
  const untilEval = untilIn(page, '#eval-error', { timeout: TIMEOUT_MS });
  const untilTune = untilIn(page, '#tune-error', { timeout: TIMEOUT_MS });
  const download = async (selector, name) => {
    const [d] = await Promise.all([page.waitForEvent('download'), page.click(selector)]);
    const to = path.join(dir, name ?? d.suggestedFilename());
    await d.saveAs(to);
    return { path: to, suggested: d.suggestedFilename() };
  };
  /// Compresses with the settings on the page; returns the summary and the stages seen.
  const compress = async () => {
    await page.evaluate(() => { delete document.querySelector('#cmp-status').dataset.done; });
    await page.click('#cmp-run');
    assert.equal(await untilCmp(() => document.querySelector('#cmp-status').dataset.done === 'true'), 'ok');
    return page.evaluate(() => ({
      summary: window.edgeLlmCompress.summary,
      stages: document.body.dataset.compressStages,
      rows: [...document.querySelectorAll('#cmp-layers tbody tr')].map((tr) => ({
        sparsity: Number(tr.dataset.sparsity), bits: Number(tr.dataset.bits) })),
      status: document.querySelector('#cmp-status').textContent,
    }));
  };
  const perplexity = async () => {
    const n = await page.locator('#ppl-history li').count();
    await page.fill('#ppl-max', String(PPL_TOKENS));
    await page.click('#ppl-run');
    assert.equal(await untilEval((k) => document.querySelectorAll('#ppl-history li').length > k, n), 'ok');
    return Number(await page.getAttribute('#ppl-history li:last-child', 'data-perplexity'));
  };
  const cliPpl = (model) => cli(['perplexity', '--model', model, '--text', path.join(dir, 'song.txt'),
    '--max-tokens', String(PPL_TOKENS), '--device', 'cpu', '--json'])?.perplexity;
  const cliCompress = (flags, out) => cli(['compress', '--model', TINY, '--calib', path.join(dir, 'song.txt'),
    ...flags, '--cache-dir', path.join(dir, 'cache'), '--out', out, '--json']);

  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await ready(page);
    assert.equal(await page.getAttribute('#config-table', 'data-compressed'), 'false');
    // The calibration data: the user's file (picked as the tuning data).
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    await page.waitForFunction(() => !document.querySelector('#cmp-run').disabled);
    assert.equal(await page.inputValue('#cmp-allocation'), 'luc', 'LUC is the default allocation');

    // LUC: calibrate, Fisher, profile, compress (the profile's Hessians reused), with progress.
    await page.fill('#cmp-sparsity', LUC.sparsity);
    await page.fill('#cmp-bits', LUC.bits);
    await page.fill('#cmp-rows', LUC.rows);
    await page.fill('#cmp-seq', LUC.seq);
    assert.equal(await page.inputValue('#cmp-device'), 'auto');
    await page.selectOption('#cmp-device', 'gpu');
    const t0 = Date.now();
    const luc = await compress();
    console.log(`LUC compression in the page: ${((Date.now() - t0) / 1000).toFixed(1)} s; stages ${luc.stages}; ` +
      `policy ${JSON.stringify(luc.summary.policy.layers)}; ${luc.summary.file_bytes} bytes ` +
      `(original ${luc.summary.original_file_bytes})`);
    assert.equal(luc.stages, 'calibrate,fisher,profile,compress');
    // The calibration passes (Hessians, Fisher) ran on the compression worker's WebGPU device.
    assert.equal(luc.summary.calibration.device, 'gpu');
    assert.match(await page.textContent('#cmp-summary [data-key=calibration] td'), /, on the GPU$/);
    assert.equal(luc.summary.policy.allocation, 'luc');
    assert.equal(luc.summary.profile_info.measured, true);
    assert.equal(luc.summary.profile_cached, false);
    // The packed projections are smaller than f32 ones (the tiny file itself may already be
    // compact: 4 bits everywhere at sparsity 0.3 need not beat it).
    assert.ok(luc.summary.projection_packed_bytes < luc.summary.projection_f32_bytes,
      `packed ${luc.summary.projection_packed_bytes} < f32 ${luc.summary.projection_f32_bytes} bytes`);
    assert.deepEqual(luc.rows, luc.summary.policy.layers.map((l) => ({ sparsity: l.sparsity, bits: l.bits })),
      'the per-block table shows the policy');
    assert.equal(luc.rows.length, 2);
    const mean = luc.rows.reduce((a, r) => a + r.sparsity, 0) / luc.rows.length;
    assert.ok(Math.abs(mean - 0.3) < 1e-9, `mean sparsity ${mean}`);
    assert.match(luc.status, /is now the loaded model/);
    assert.equal(await page.getAttribute('#config-table', 'data-compressed'), 'true', 'the page switched models');
    assert.match(await page.textContent('#cmp-summary [data-key=file] td'), /MiB \(original [\d.]+ MiB: [\d.]+ %\)/);

    // Perplexity of the compressed model in the page, and the downloaded file natively.
    await page.waitForFunction(() => !document.querySelector('#ppl-run').disabled);
    const pagePpl = await perplexity();
    const lucFile = await download('#cmp-download');
    assert.match(lucFile.suggested, /^tiny-luc-s0\.3-b4\.gguf$/);
    const lucBytes = fs.readFileSync(lucFile.path);
    assert.equal(lucBytes.length, luc.summary.file_bytes);
    const nativePpl = cliPpl(lucFile.path);
    if (nativePpl !== undefined) {
      console.log(`perplexity of the compressed model on ${PPL_TOKENS} tokens: page ${pagePpl}, ` +
        `edge-llm perplexity on the download ${nativePpl}`);
      assert.ok(Math.abs(pagePpl - nativePpl) <= PPL_REL_TOL * nativePpl, `page ${pagePpl} vs CLI ${nativePpl}`);
      // `edge-llm compress` with the same options: the same policy, formats and layout
      // (every byte before the tensor data), and the same model up to rounding. Not byte
      // for byte: the Hessians' f64 products (matrixmultiply's gemm) round differently
      // natively (its x86-64 SIMD kernel) and in wasm32 (its portable kernel), and SparseGPT
      // and GPTQ carry that into the last bit of a few scales (seen: 3 bytes of 64,480,
      // all in ffn_down scales). Uniform RTN below is byte-identical.
      const out = path.join(dir, 'cli-luc.gguf');
      const c = cliCompress(LUC_FLAGS, out);
      assert.deepEqual(c.policy, luc.summary.policy, 'the CLI chooses the same policy');
      const cliBytes = fs.readFileSync(out);
      assert.equal(cliBytes.length, lucBytes.length);
      const dataStart = tensorDataOffset(lucBytes);
      assert.ok(cliBytes.subarray(0, dataStart).equals(lucBytes.subarray(0, dataStart)),
        'the same metadata, tensor names, formats and offsets');
      let differ = 0;
      for (let i = dataStart; i < lucBytes.length; i++) if (cliBytes[i] !== lucBytes[i]) differ += 1;
      const cliFilePpl = cliPpl(out);
      console.log(`edge-llm compress with the same options: ${differ} of ${lucBytes.length - dataStart} tensor ` +
        `bytes differ; perplexity of its file ${cliFilePpl}`);
      assert.ok(Math.abs(cliFilePpl - nativePpl) <= PPL_REL_TOL * nativePpl,
        `perplexity of the CLI's file ${cliFilePpl} vs the page's ${nativePpl}`);
    } else {
      console.log('CLI cross-checks skipped (no edge-llm binary)');
    }

    // Uniform: no profile. Calibration where `auto` puts it: the CPU (wasm) when the page's
    // WebGPU is a software adapter (SwiftShader here), else the GPU.
    await page.selectOption('#cmp-device', 'auto');
    const software = (await page.textContent('#gpu-table [data-key=device_type] td')).toLowerCase() === 'cpu';
    await page.selectOption('#cmp-allocation', 'uniform');
    await page.fill('#cmp-bits', '4');
    await page.selectOption('#cmp-method', 'wanda');
    await page.selectOption('#cmp-quant', 'rtn');
    const uni = await compress();
    assert.equal(uni.stages, 'calibrate,compress');
    assert.equal(uni.summary.policy.allocation, 'uniform');
    assert.equal(uni.summary.profile_info, null);
    assert.equal(uni.summary.calibration.device, software ? 'cpu' : 'gpu', 'auto: the CPU on a software adapter');
    assert.deepEqual(uni.rows, [{ sparsity: 0.3, bits: 4 }, { sparsity: 0.3, bits: 4 }]);
    const uniFile = await download('#cmp-download');
    const out = path.join(dir, 'cli-uniform.gguf');
    if (cliCompress(UNIFORM_FLAGS, out)) {
      assert.ok(fs.readFileSync(out).equals(fs.readFileSync(uniFile.path)), 'uniform: the same bytes as the CLI');
    }

    // LUC again: the profile comes from this browser's cache (no profiling stage); the
    // calibration on the GPU again, as the first time (the GPU's and the CPU's Hessians
    // differ in rounding, which SparseGPT carries into a few bytes).
    await page.selectOption('#cmp-device', 'gpu');
    await page.selectOption('#cmp-allocation', 'luc');
    await page.fill('#cmp-bits', LUC.bits);
    await page.selectOption('#cmp-method', 'sparsegpt');
    await page.selectOption('#cmp-quant', 'gptq');
    const t1 = Date.now();
    const again = await compress();
    console.log(`LUC again, profile cached: ${((Date.now() - t1) / 1000).toFixed(1)} s; stages ${again.stages}`);
    assert.equal(again.stages, 'calibrate,compress');
    assert.equal(again.summary.profile_cached, true);
    assert.deepEqual(again.summary.policy, luc.summary.policy);
    const againFile = await download('#cmp-download');
    assert.ok(fs.readFileSync(againFile.path).equals(lucBytes), 'the cached profile gives the same file');

    // Profile alone: the cached profile, its sensitivities per block.
    await page.evaluate(() => { delete document.querySelector('#cmp-status').dataset.profileKey; });
    await page.click('#cmp-profile');
    assert.equal(await untilCmp(() => document.querySelector('#cmp-status').dataset.profileKey !== undefined), 'ok');
    assert.equal(await page.getAttribute('#cmp-status', 'data-profile-cached'), 'true');
    assert.equal(await page.getAttribute('#cmp-status', 'data-profile-key'), luc.summary.profile_info.key);
    const sens = await page.$$eval('#cmp-layers tbody tr', (trs) => trs.map((t) => Number(t.dataset.pruneSensitivity)));
    assert.deepEqual(sens, luc.summary.layers.map((l) => l.prune_sensitivity));

    // A policy file for a 3-block model: a plain message; nothing is lost.
    const bad = { version: 1, layers: [0, 1, 2].map(() => ({ sparsity: 0, bits: 4 })), pattern: 'unstructured',
      prune: 'sparsegpt', quant: 'gptq', group: 32, symmetric: true, allocation: 'manual' };
    await page.setInputFiles('#cmp-policy', { name: 'bad-policy.json', mimeType: 'application/json',
      buffer: Buffer.from(JSON.stringify(bad)) });
    await page.waitForSelector('#cmp-error:not([hidden])');
    const err = await page.textContent('#cmp-error');
    assert.match(err, /^bad-policy\.json: (invalid argument: )?policy: 3 layer entries for a model of 2 layers/);
    assert.match(err, /Nothing was changed/);
    await page.click('#cmp-run');
    await page.waitForFunction(() => document.body.dataset.compressState === 'error');
    assert.match(await page.textContent('#cmp-error'), /3 layer entries for a model of 2 layers[\s\S]*does not fit this model/);
    assert.equal(await page.getAttribute('#config-table', 'data-compressed'), 'true', 'the compressed model stays loaded');
    assert.equal(await page.isDisabled('#cmp-download'), false, 'the compressed model can still be downloaded');
    assert.deepEqual(await page.evaluate(() => window.edgeLlmCompress.summary.policy), luc.summary.policy);
    await page.click('#cmp-policy-clear');
    assert.equal(await page.isHidden('#cmp-error'), true);

    // A short compress-then-tune run, then the run report.
    // The GPU engine, forced: auto would pick the CPU engine on SwiftShader.
    await page.selectOption('#opt-device', 'gpu');
    for (const [id, v] of [['#opt-steps', TUNE_STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 2],
      ['#opt-save', 2], ['#opt-accum', 1], ['#opt-rank', 4]]) {
      await page.fill(id, String(v));
    }
    await page.selectOption('#opt-mode', 'compress-then-tune');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    await page.click('#tune-start');
    assert.equal(await untilTune(() => document.body.dataset.tuneState === 'done'), 'ok');
    const tunedPpl = await perplexity();
    await page.screenshot({ path: path.join(ARTIFACTS, 'compress.png'), fullPage: true });
    const reportFile = await download('#report-download');
    assert.equal(reportFile.suggested, 'edge-llm-run-report.json');
    const report = JSON.parse(fs.readFileSync(reportFile.path, 'utf8'));
    assert.equal(report.format, 'edge-llm run report');
    assert.equal(report.version, 1);
    assert.equal(report.model.name, 'tiny-luc-s0.3-b4.gguf');
    assert.equal(report.model.compressed, true);
    assert.deepEqual(report.model.policy, luc.summary.policy);
    assert.equal(report.model.config.n_layers, 2);
    assert.equal(report.model.compressed_from, 'models/tiny.gguf');
    assert.equal(report.compression.file_bytes, lucBytes.length);
    assert.equal(report.compression.layers.length, 2);
    assert.equal(report.data.name, 'song.txt');
    assert.equal(report.data.kind, 'auto');
    assert.ok(report.data.stats.train_rows > 0);
    assert.equal(report.tuning.mode, 'compress-then-tune');
    assert.equal(report.tuning.device, 'gpu');
    assert.equal(report.tuning.options.steps, TUNE_STEPS);
    assert.deepEqual(report.tuning.losses.map((l) => l.step), [1, 2, 3, 4]);
    assert.ok(report.tuning.losses.every((l) => Number.isFinite(l.loss)));
    assert.ok(report.tuning.validation.length >= 2 && report.tuning.validation.every((v) => Number.isFinite(v.loss)));
    assert.ok(report.tuning.tokens_per_s > 0);
    assert.equal(report.tuning.plan.compressed, true);
    assert.ok(report.tuning.plan.max_storage_buffer_binding_size > 0);
    assert.deepEqual(report.tuning.windows, [{ index: 0, layers: [0, 2], exit_after: null }]);
    const ppls = report.evaluation.perplexity.map((p) => p.perplexity);
    assert.deepEqual(ppls, [pagePpl, tunedPpl]);
    assert.equal(report.evaluation.perplexity[1].source, 'tuned');
    assert.ok(report.gpu.device_limits.max_storage_buffer_binding_size > 0);

    assert.equal(await page.isHidden('#tune-error'), true, await page.textContent('#tune-error'));
    assert.equal(await page.isHidden('#eval-error'), true, await page.textContent('#eval-error'));
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    await page.screenshot({ path: path.join(ARTIFACTS, 'compress-last.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

// Cancel: the job's worker is stopped and nothing else changes.
test('cancel a compression: the loaded model stays', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await page.waitForFunction(() => document.body.dataset.ready === 'true' && !document.querySelector('#cmp-run').disabled);
    await openAll(page);
    // Enough work to cancel in the middle of: many long rows, the loss measured on all.
    await page.setInputFiles('#data-file', { name: 'long.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT.repeat(40)) });
    await page.fill('#cmp-rows', '64');
    await page.fill('#cmp-seq', '128');
    await page.fill('#cmp-loss-rows', '64');
    await page.click('#cmp-run');
    // Enabled only while the job runs (Playwright waits for that, then clicks).
    await page.click('#cmp-cancel');
    const end = await page.waitForFunction(() => ['cancelled', 'done', 'error'].includes(document.body.dataset.compressState)
      && document.body.dataset.compressState).then((h) => h.jsonValue());
    assert.equal(end, 'cancelled', await page.textContent('#cmp-error'));
    assert.match(await page.textContent('#cmp-status'), /^Cancelled/);
    assert.equal(await page.isHidden('#cmp-error'), true);
    assert.equal(await page.getAttribute('#config-table', 'data-compressed'), 'false');
    assert.equal(await page.isDisabled('#cmp-run'), false);
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
  } finally {
    await context.close();
  }
});
