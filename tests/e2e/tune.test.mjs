// Tuning in the browser end to end: serve www/ (as scripts/run.sh does), open the page with
// the seeded TINY model (`?model=models/tiny.gguf`) in headless Chromium with WebGPU
// (SwiftShader), pick a small text file, tune a few steps in the worker, see the loss fall
// and the plot grow, reload mid-run and resume from the IndexedDB checkpoint, lose the GPU
// (destroyed from the worker, as a driver reset would) and see a plain message, reload and
// resume again, finish, and
// download the PEFT adapter (checked: a safetensors file with PEFT tensor names), then
// evaluate: perplexity on the tuning text falls from the base model's, the same adapter
// loaded back from the downloaded files gives the same perplexity, a chat reply streams,
// and ARC-Easy accuracy on a few questions is shown per question.
// A second test (the windowed modes, edge and partial, are in modes.test.mjs) runs the
// adaptive edge order, has the GPU run out of memory mid-run (forced, see
// OOM_PRELUDE), sees the plain message, reloads, resumes and ends with the CLI's losses.
// Saves tests/e2e/artifacts/tune-running.png (mid-run), tune-done.png and eval.png.
// Needs www/pkg (scripts/build-wasm.sh); writes www/models/tiny.gguf with the CLI
// (`edge-llm make-tiny`) when it is missing.

import { test, before, after } from 'node:test';
import {
  WWW, ARTIFACTS, TINY, TEXT, serve, launchBrowser, ensureTinyModel, ensureWebData, edgeLlm, checkNativeSteps,
  LOSS_REL_TOL, LOSS_ABS_TOL, untilIn, downloadAdapter, safetensorsHeader, ready,
} from './harness.mjs';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

// SwiftShader runs the kernels on a small shared CPU.
const TIMEOUT_MS = 240_000;

// The run: short rows and a high learning rate so a few steps visibly lower the loss.
// The same settings as CLI flags, for the native cross-check.
const STEPS = 24;
const NATIVE_FLAGS = ['--steps', '24', '--lr', '0.01', '--seq-len', '32', '--eval-every', '4', '--accum', '1',
  '--lora-rank', '4', '--seed', '0'];
const SAVE_EVERY = 4;
// Evaluation after tuning: tokens of the tuning text scored, chat length, ARC questions.
const PPL_TOKENS = 128;
const CHAT_TOKENS = 8;
const MC_QUESTIONS = 5;
// The adapter exported and imported back vs the tuned one: same weights, same perplexity
// up to f32 rounding of the q/k row permutation (none: it is a reordering).
const PPL_REL_TOL = 1e-4;
const RELOAD_AFTER = 8;   // reload once a checkpoint at or after this step is stored

let server, browser, base;
/// The same run natively (`edge-llm tune --device gpu`): {train: [[step, loss]], val: [[step, loss]]},
/// or null without a CLI binary or (with EDGE_LLM_ALLOW_NO_GPU=1) without a native adapter.
function nativeRun(text) {
  const bin = edgeLlm();
  if (!bin) return null;
  const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'native-'));
  const data = path.join(dir, 'song.txt');
  fs.writeFileSync(data, text);
  let out;
  try {
    out = execFileSync(bin, ['tune', '--model', TINY, '--data', data, ...NATIVE_FLAGS, '--device', 'gpu', '--json',
      '--out', path.join(dir, 'run')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (process.env.EDGE_LLM_ALLOW_NO_GPU === '1') return null;
    throw new Error(`the native run failed (set EDGE_LLM_ALLOW_NO_GPU=1 to skip it without a GPU):\n${e.stderr}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const run = { train: [], val: [] };
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue;
    const r = JSON.parse(line);
    if (typeof r.step === 'number' && typeof r.loss === 'number') {
      run.train.push([r.step, r.loss]);
      if (typeof r.val_loss === 'number') run.val.push([r.step, r.val_loss]);
    }
  }
  return run;
}

before(async () => {
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'edge_llm.js')), 'www/pkg is missing: run scripts/build-wasm.sh');
  ensureTinyModel();
  ensureWebData();  // ARC-Easy validation for the accuracy check
  ({ server, base } = await serve(WWW));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
});

// A small, repetitive text: a tiny random model learns it within a few steps.
const BAD_JSONL = [
  '{"prompt": "Question: 2+2?\\nAnswer:", "response": " 4"}',
  '{"prompt": "no response here"}',
  'this line is not JSON',
  '{"prompt": "Question: the sky?\\nAnswer:", "response": " blue"}',
].join('\n');

test('tune in the browser: plan, train, reload and resume from IndexedDB, download the adapter', async () => {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();
  const pageErrors = [];
  const consoleErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.setDefaultTimeout(TIMEOUT_MS);
  const state = () => page.evaluate(() => document.body.dataset.tuneState);
  const tuneError = async () => (await page.isVisible('#tune-error')) ? page.textContent('#tune-error') : '';
  /// Waits for `fn` in the page, failing early with the page's tuning (or evaluation) error.
  const until = untilIn(page, '#tune-error', { timeout: TIMEOUT_MS });
  const untilEval = untilIn(page, '#eval-error', { timeout: TIMEOUT_MS });

  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await ready(page);
    assert.equal(await page.textContent('#config-table [data-key=n_layers] td'), '2');
    assert.equal(await page.inputValue('#opt-seq'), '64', 'small models default to 64-token rows');

    // A file with bad lines: the good ones are kept and the bad ones listed by line.
    await page.setInputFiles('#data-file', { name: 'mixed.jsonl', mimeType: 'application/json', buffer: Buffer.from(BAD_JSONL) });
    await page.waitForSelector('#data-problems-box:not([hidden])');
    const problems = await page.locator('#data-problems li').allTextContents();
    assert.deepEqual(problems.map((p) => p.match(/^line (\d+):/)?.[1]), ['2', '3'], problems.join('\n'));
    assert.match(await page.textContent('#data-status'), /^mixed\.jsonl: 2 examples \(a prompt and its response each\)/);
    assert.match(await page.textContent('#data-preview'), /Question: 2\+2/);

    // The small text file, and the settings of a short run.
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    // The GPU engine, forced: auto would pick the CPU engine on SwiftShader.
    await page.selectOption('#opt-device', 'gpu');
    for (const [id, v] of [['#opt-steps', STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 4],
      ['#opt-save', SAVE_EVERY], ['#opt-accum', 1], ['#opt-rank', 4]]) {
      await page.fill(id, String(v));
    }
    // A budget far too small is refused before anything is allocated, with what would fit.
    await page.fill('#opt-budget', '0.01');
    await page.waitForSelector('#plan-error:not([hidden])');
    assert.match(await page.textContent('#plan-error'), /too small/);
    assert.equal(await page.isDisabled('#tune-start'), true);
    await page.fill('#opt-budget', '');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    assert.match(await page.textContent('#data-status'), /^song\.txt: [\d.]+ KiB of plain text, in \d+ pieces of up to 32 tokens → \d+ to train on/);
    const planned = Number(await page.getAttribute('#plan-table', 'data-total-bytes'));
    assert.ok(planned > 0, 'a memory plan');
    // No speed probe on SwiftShader's WebGPU (it would take minutes with a real model): the
    // page says why and what is faster.
    await page.waitForFunction(() => /^No estimate: WebGPU here is a software renderer/
      .test(document.querySelector('#estimate').textContent));

    // The base model's perplexity on the tuning text, to compare after tuning.
    // (The history of results lives in the page: the reload below clears it.)
    const runPerplexity = async () => {
      const n = await page.locator('#ppl-history li').count();
      await page.fill('#ppl-max', String(PPL_TOKENS));
      await page.click('#ppl-run');
      assert.equal(await untilEval((k) => document.querySelectorAll('#ppl-history li').length > k, n), 'ok');
      return page.$eval('#ppl-history li:last-child', (e) => ({
        source: e.dataset.source, ppl: Number(e.dataset.perplexity), tokens: Number(e.dataset.tokens) }));
    };
    const basePpl = await runPerplexity();
    assert.equal(basePpl.source, 'base');
    assert.equal(basePpl.tokens, PPL_TOKENS);
    assert.ok(Number.isFinite(basePpl.ppl) && basePpl.ppl > 1, `base perplexity ${basePpl.ppl}`);

    // Train until a checkpoint at or after RELOAD_AFTER is stored.
    await page.click('#tune-start');
    assert.equal(await until((n) => Number(document.body.dataset.savedStep || 0) >= n, RELOAD_AFTER), 'ok');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'tune-running.png'), fullPage: true });
    const before = await page.evaluate(() => ({
      history: window.edgeLlmTune.history,
      gpu: Number(document.querySelector('#tune-gpu').dataset.bytes),
      points: Number(document.querySelector('#loss-plot').dataset.trainPoints),
    }));
    assert.equal(before.gpu, planned, 'GPU bytes in use equal the plan');
    assert.ok(before.points >= RELOAD_AFTER, `plot has ${before.points} points`);
    const saved = Number(await page.evaluate(() => document.body.dataset.savedStep));
    const firstLosses = before.history.train.slice(0, 3).map((p) => p[1]);

    // Reload mid-run: the saved run is offered and continues from its checkpoint.
    await page.reload();
    await ready(page);
    await page.waitForSelector('#saved-run:not([hidden])');
    assert.match(await page.textContent('#saved-run-text'), new RegExp(`step ${saved} of ${STEPS} on song\\.txt`));
    await page.click('#resume-saved');
    assert.equal(await until(() => ['running', 'done'].includes(document.body.dataset.tuneState)), 'ok');
    const resumedAt = await page.evaluate(() => window.edgeLlmTune.history.train.length);
    assert.equal(resumedAt, saved, 'the loss history up to the checkpoint is restored');
    assert.match(await page.textContent('#data-status'), /^song\.txt: /, 'the resumed run\'s data is shown');

    // Pause and resume once within the session, then let it finish.
    assert.equal(await until((n) => window.edgeLlmTune.step >= n, saved + 2), 'ok');
    if (await state() === 'running') {
      await page.click('#tune-pause');
      assert.equal(await until(() => document.body.dataset.tuneState === 'paused'), 'ok');
      await page.click('#tune-resume');
    }

    // The GPU is lost (as a driver reset would lose it) while paused: the next step stops
    // the run with a plain message, the checkpoint saved at the pause stays, and a reload
    // resumes from it.
    assert.equal(await until((n) => window.edgeLlmTune.step >= n, saved + 4), 'ok');
    assert.equal(await state(), 'running', `still running at step ${saved + 4} of ${STEPS}`);
    {
      await page.click('#tune-pause');
      assert.equal(await until(() => document.body.dataset.tuneState === 'paused'), 'ok');
      await page.waitForFunction((n) => Number(document.body.dataset.savedStep) === n,
        await page.evaluate(() => window.edgeLlmTune.step));
      const pausedAt = Number(await page.evaluate(() => document.body.dataset.savedStep));
      await page.evaluate(() => window.edgeLlmDebug.loseGpu());
      await page.click('#tune-resume');
      await page.waitForFunction(() => document.body.dataset.tuneState === 'error');
      const lost = await tuneError();
      console.log(`after losing the GPU: ${lost}`);
      assert.match(lost, /GPU device was lost/);
      assert.match(lost, /checkpoint is kept in this browser/);
      await page.reload();
      await ready(page);
      await page.waitForSelector('#saved-run:not([hidden])');
      assert.match(await page.textContent('#saved-run-text'), new RegExp(`step ${pausedAt} of ${STEPS} `));
      await page.click('#resume-saved');
    }
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    const after = await page.evaluate(() => ({
      history: window.edgeLlmTune.history,
      status: document.querySelector('#tune-status').textContent,
      points: Number(document.querySelector('#loss-plot').dataset.trainPoints),
      valPoints: Number(document.querySelector('#loss-plot').dataset.valPoints),
    }));
    const steps = after.history.train.map((p) => p[0]);
    assert.deepEqual(steps, Array.from({ length: STEPS }, (_, i) => i + 1), 'one loss per step, in order, none repeated');
    assert.equal(after.points, STEPS);
    assert.ok(after.valPoints >= STEPS / 4, `${after.valPoints} validation points`);
    const lastLosses = after.history.train.slice(-3).map((p) => p[1]);
    const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
    console.log(`loss: first steps ${firstLosses.map((x) => x.toFixed(3)).join(', ')}; ` +
      `last steps ${lastLosses.map((x) => x.toFixed(3)).join(', ')}; ` +
      `validation ${after.history.val.map(([s, v]) => `${s}:${v.toFixed(3)}`).join(' ')}`);
    console.log(`status: ${after.status}`);
    assert.ok(mean(lastLosses) < mean(firstLosses) - 0.3, 'the training loss falls');
    const val = after.history.val;
    assert.ok(val[val.length - 1][1] < val[0][1], 'the validation loss falls');

    // The same engine core natively gives the same losses (the reload and resume included).
    const native = nativeRun(TEXT);
    if (native) {
      const close = (a, b) => Math.abs(a - b) <= Math.max(LOSS_REL_TOL * (Math.abs(a) + Math.abs(b)), LOSS_ABS_TOL);
      for (const key of ['train', 'val']) {
        assert.equal(native[key].length, after.history[key].length, `${key} points, native vs browser`);
        native[key].forEach(([s, v], i) => {
          const [ws, wv] = after.history[key][i];
          assert.ok(s === ws && close(v, wv), `${key} loss at step ${s}: native ${v}, browser ${wv}`);
        });
      }
      console.log('native run (edge-llm tune --device gpu): the same losses within tolerance');
    } else {
      console.log('native cross-check skipped (no edge-llm binary or no native adapter)');
    }
    await page.screenshot({ path: path.join(ARTIFACTS, 'tune-done.png'), fullPage: true });

    // Download the adapter (one zip): a safetensors with PEFT names and the PEFT config.
    const adapterDir = fs.mkdtempSync(path.join(ARTIFACTS, 'tune-adapter-'));
    const files = await downloadAdapter(page, adapterDir);
    assert.deepEqual(Object.keys(files).sort(), ['adapter_config.json', 'adapter_model.safetensors']);
    const header = safetensorsHeader(files['adapter_model.safetensors']);
    const names = Object.keys(header).filter((n) => n !== '__metadata__');
    // 2 layers × 7 projections × (A, B).
    assert.equal(names.length, 28, names.join('\n'));
    assert.ok(names.includes('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'), names.join('\n'));
    assert.ok(names.includes('base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'), names.join('\n'));
    assert.deepEqual(header['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'].shape, [4, 64]);
    const config = JSON.parse(files['adapter_config.json'].toString('utf8'));
    assert.equal(config.peft_type, 'LORA');
    assert.equal(config.r, 4);
    // LoRA B starts at zero: a trained adapter has moved it.
    const b = header['base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight'];
    const start = 8 + Number(files['adapter_model.safetensors'].readBigUInt64LE(0)) + b.data_offsets[0];
    const floats = new Float32Array(files['adapter_model.safetensors'].buffer.slice(
      files['adapter_model.safetensors'].byteOffset + start,
      files['adapter_model.safetensors'].byteOffset + start + (b.data_offsets[1] - b.data_offsets[0])));
    assert.ok(floats.some((x) => x !== 0) && floats.every(Number.isFinite), 'trained lora_B');

    // Evaluate with the tuned adapter (selected when the run finished): the perplexity
    // of the tuning text falls.
    assert.equal(await page.isChecked('input[name=eval-source][value=tuned]'), true);
    const tunedPpl = await runPerplexity();
    assert.equal(tunedPpl.source, 'tuned');
    console.log(`perplexity of the tuning text (${PPL_TOKENS} tokens): base ${basePpl.ppl.toFixed(3)}, ` +
      `tuned ${tunedPpl.ppl.toFixed(3)}`);
    assert.ok(tunedPpl.ppl < basePpl.ppl * 0.8, `tuned ${tunedPpl.ppl} vs base ${basePpl.ppl}`);
    const lmBytes = Number(await page.getAttribute('#eval-model-status', 'data-lm-bytes'));
    assert.ok(lmBytes > 0, 'the evaluation model reports its GPU memory');
    assert.doesNotMatch(await page.textContent('#eval-model-status'), /trainer holds/,
      'a finished run\'s trainer is freed once its adapter is read');

    // The downloaded PEFT files, loaded back from disk: the same perplexity.
    await page.setInputFiles('#adapter-files', ['adapter_model.safetensors', 'adapter_config.json']
      .map((f) => path.join(adapterDir, f)));
    await page.waitForFunction(() => document.querySelector('input[name=eval-source][value=file]').checked);
    await page.waitForFunction(() => !document.querySelector('#ppl-run').disabled);
    const filePpl = await runPerplexity();
    assert.equal(filePpl.source, 'file');
    assert.ok(Math.abs(filePpl.ppl - tunedPpl.ppl) <= PPL_REL_TOL * tunedPpl.ppl,
      `adapter from disk ${filePpl.ppl} vs tuned ${tunedPpl.ppl}`);

    // Chat a few tokens with the tuned model, streamed piece by piece.
    await page.check('input[name=eval-source][value=tuned]');
    await page.fill('#chat-input', 'The cat sat on');
    await page.uncheck('#chat-template');
    await page.fill('#chat-max', String(CHAT_TOKENS));
    await page.click('#chat-send');
    assert.equal(await untilEval(() => document.querySelector('#chat-status').dataset.tokens !== undefined), 'ok');
    const chat = await page.evaluate(() => ({
      tokens: Number(document.querySelector('#chat-status').dataset.tokens),
      tps: Number(document.querySelector('#chat-status').dataset.tokensPerS),
      decodeTps: Number(document.querySelector('#chat-status').dataset.decodeTokensPerS),
      pieces: Number(document.querySelector('#chat-output').dataset.pieces),
      reply: document.querySelector('#chat-reply').textContent,
    }));
    console.log(`chat: ${chat.tokens} tokens at ${chat.tps.toFixed(1)} tokens/s ` +
      `(${chat.decodeTps.toFixed(1)} after the prompt) in ${chat.pieces} streamed pieces: ${JSON.stringify(chat.reply)}`);
    assert.ok(chat.tokens >= 1 && chat.tokens <= CHAT_TOKENS, `${chat.tokens} tokens`);
    assert.ok(chat.pieces >= 1 && chat.reply.length > 0, 'streamed text');
    if (chat.tokens >= 3) assert.ok(chat.pieces >= 2, `${chat.tokens} tokens arrived in ${chat.pieces} pieces`);

    // ARC-Easy accuracy on a few validation questions, shown per question.
    await page.fill('#mc-n', String(MC_QUESTIONS));
    await page.click('#mc-run');
    assert.equal(await untilEval(() => document.querySelector('#mc-status').dataset.accuracy !== undefined), 'ok');
    const acc = Number(await page.getAttribute('#mc-status', 'data-accuracy'));
    const rows = await page.$$eval('#mc-table tbody tr', (trs) => trs.map((t) => ({
      predicted: Number(t.dataset.predicted), answer: Number(t.dataset.answer) })));
    console.log(`ARC-Easy accuracy on ${rows.length} questions: ${acc}`);
    assert.ok(acc >= 0 && acc <= 1, `accuracy ${acc}`);
    assert.equal(rows.length, MC_QUESTIONS);
    assert.equal(acc, rows.filter((r) => r.predicted === r.answer).length / rows.length);
    await page.screenshot({ path: path.join(ARTIFACTS, 'eval.png'), fullPage: true });

    assert.equal(await tuneError(), '');
    assert.equal(await page.isHidden('#eval-error'), true, await page.textContent('#eval-error'));
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'tune-last.png'), fullPage: true }).catch(() => {});
    if (consoleErrors.length) console.log(`browser console errors:\n${consoleErrors.join('\n')}`);
    await context.close();
  }
});

// The GPU runs out of memory mid-run (an adaptive edge run): the page says so plainly with
// what to do, the checkpoint stored before it stays, and after a reload the run resumes from
// it and finishes with the same windows and losses as `edge-llm tune --window-schedule
// adaptive` natively. SwiftShader never runs out of memory, so the test forces it: the
// worker's script is served with a prelude that, when the worker reports step OOM_AT_STEP,
// raises a GPUOutOfMemoryError on the worker's real GPUDevice as an uncaptured error —
// the event a browser fires when an allocation fails — so everything after it (wgpu's
// handler, the engine's error, the worker, the page) is the real path.
// Adaptive order on the tiny model (exits after blocks 1 and 2): a sweep of 3 steps per
// window, then phases of 3 steps given by the probe loss.
const OOM_STEPS = 12;
const OOM_AT_STEP = 8;
const OOM_SAVE_EVERY = 2;
const OOM_FLAGS = ['--steps', String(OOM_STEPS), '--lr', '0.01', '--seq-len', '32', '--eval-every', '4',
  '--accum', '1', '--lora-rank', '4', '--seed', '0', '--mode', 'edge', '--exit-stride', '1',
  '--window-schedule', 'adaptive'];

const OOM_PRELUDE = `
{ // test prelude (tests/e2e/tune.test.mjs): out of memory at step ${OOM_AT_STEP}
  const devices = [];
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const d = await requestDevice.apply(this, args);
    devices.push(d);
    return d;
  };
  const postMessage = self.postMessage.bind(self);
  let fired = false;
  self.postMessage = (msg, transfer) => {
    postMessage(msg, transfer);
    if (!fired && msg && msg.event === 'step' && msg.report.step === ${OOM_AT_STEP}) {
      fired = true;
      const error = new GPUOutOfMemoryError('forced by the test');
      for (const d of devices) d.dispatchEvent(new GPUUncapturedErrorEvent('uncapturederror', { error }));
    }
  };
}
`;

test('out of memory mid-run (adaptive edge): a plain message, the checkpoint kept, a reload resumes', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
  await context.route('**/worker.js', async (route) => {
    const r = await route.fetch();
    await route.fulfill({ response: r, body: OOM_PRELUDE + await r.text(), headers: { ...r.headers(), 'cache-control': 'no-store' } });
  });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  const until = untilIn(page, '#tune-error', { timeout: TIMEOUT_MS });
  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await ready(page);
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    await page.selectOption('#opt-mode', 'edge');
    await page.selectOption('#opt-window-schedule', 'adaptive');
    // The GPU engine, forced: auto would pick the CPU engine on SwiftShader.
    await page.selectOption('#opt-device', 'gpu');
    for (const [id, v] of [['#opt-steps', OOM_STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 4],
      ['#opt-save', OOM_SAVE_EVERY], ['#opt-accum', 1], ['#opt-rank', 4], ['#opt-exit-stride', 1]]) {
      await page.fill(id, String(v));
    }
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled &&
      /adaptive order/.test(document.querySelector('#plan-table [data-key=windows]')?.textContent ?? ''));
    await page.click('#tune-start');

    // The error: plain, with what to do, and the checkpoint before it kept.
    await page.waitForFunction(() => document.body.dataset.tuneState === 'error');
    const message = await page.textContent('#tune-error');
    console.log(`after running out of GPU memory: ${message}`);
    assert.match(message, /the GPU ran out of memory/);
    assert.match(message, /lower the memory budget, the sequence length or the LoRA rank/);
    assert.match(message, /checkpoint is kept in this browser; reload the page to resume/);
    const saved = Number(await page.evaluate(() => document.body.dataset.savedStep));
    assert.equal(saved, (Math.ceil(OOM_AT_STEP / OOM_SAVE_EVERY) - 1) * OOM_SAVE_EVERY,
      'the last checkpoint stored before the failing step (the one after it needed the GPU)');

    // A reload (the worker now as served) offers the run and resumes it to the end.
    await context.unroute('**/worker.js');
    await page.reload();
    await ready(page);
    await page.waitForSelector('#saved-run:not([hidden])');
    assert.match(await page.textContent('#saved-run-text'), new RegExp(`step ${saved} of ${OOM_STEPS} on song\\.txt`));
    await page.click('#resume-saved');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    const train = await page.evaluate(() => window.edgeLlmTune.history.train);
    console.log(`adaptive edge losses: ${train.map(([s, v, w]) => `${s}:w${w}:${v.toFixed(3)}`).join(' ')}`);
    assert.deepEqual(train.map((p) => p[0]), Array.from({ length: OOM_STEPS }, (_, i) => i + 1),
      'one loss per step, none lost or repeated');
    assert.ok(train[train.length - 1][1] < train[0][1] - 0.3, 'the loss falls over the run');

    // The same run natively, uninterrupted: the same windows (the adaptive choices) and losses.
    checkNativeSteps(OOM_FLAGS, train, 'edge-llm tune --window-schedule adaptive --device gpu');
    // The adaptive order, not the reference one (which gives window 0 the first 6 steps).
    assert.notDeepEqual(train.map((p) => p[2]), Array.from({ length: OOM_STEPS }, (_, i) => (i < 6 ? 0 : 1)));
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'oom-last.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});
