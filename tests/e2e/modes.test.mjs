// The windowed modes in the browser, on the seeded TINY model: edge mode (adaptive layer
// tuning: windows between early exits, on the GPU in the worker) with its windows, losses
// (against `edge-llm tune --mode edge --device gpu`), per-exit and voted accuracy (against
// `edge-llm eval-mc --vote`), voted chat and exits.safetensors; and partial mode (the last
// block only) with the CLI's losses and only that block's LoRA moved.
// Saves tests/e2e/artifacts/edge-*.png and partial-last.png. Needs www/pkg
// (scripts/build-wasm.sh); writes www/models/tiny.gguf with the CLI when it is missing.

import { test, before, after } from 'node:test';
import {
  ROOT, WWW, ARTIFACTS, TINY, TEXT, serve, launchBrowser, ensureTinyModel, ensureWebData, cliJson, checkNativeSteps,
  untilIn, downloadAdapter, safetensorsHeader, ready,
} from './harness.mjs';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

// SwiftShader runs the kernels on a small shared CPU.
const TIMEOUT_MS = 240_000;
// Chat length after tuning.
const CHAT_TOKENS = 8;

let server, browser, base;

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

// Edge mode (adaptive layer tuning) in the browser: exits after blocks 1 and 2 of the tiny
// model, windows trained in turn on the GPU in the worker, per-exit and voted accuracy,
// voted chat, and the adapter's exits.safetensors downloaded and loaded back.
// Saves tests/e2e/artifacts/edge-done.png and edge-eval.png.
// Reference schedule with the steps shared by depth (--window-steps-power 1): after one
// step each, window 0 gets 0.5/1.5 of the other 10 → steps 1–4, window 1 steps 5–12.
const EDGE_STEPS = 12;
const EDGE_WINDOW_0_STEPS = 4;
const EDGE_MC_QUESTIONS = 40;  // enough for the rules to differ
const EDGE_FLAGS = ['--steps', String(EDGE_STEPS), '--lr', '0.01', '--seq-len', '32', '--eval-every', '4',
  '--accum', '1', '--lora-rank', '4', '--seed', '0', '--mode', 'edge', '--exit-stride', '1',
  '--window-steps-power', '1'];


test('edge mode: windows on the GPU, per-window losses, per-exit and voted accuracy, exits.safetensors', async () => {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  const until = untilIn(page, '#tune-error', { timeout: TIMEOUT_MS });
  const untilEval = untilIn(page, '#eval-error', { timeout: TIMEOUT_MS });
  const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await ready(page);
    // Clamped to the model's 2 blocks.
    assert.equal(await page.inputValue('#opt-exit-stride'), '2');
    assert.equal(await page.inputValue('#opt-partial'), '2');
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    // The GPU engine, forced: auto would pick the CPU engine on SwiftShader.
    await page.selectOption('#opt-device', 'gpu');
    for (const [id, v] of [['#opt-steps', EDGE_STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 4],
      ['#opt-save', 4], ['#opt-accum', 1], ['#opt-rank', 4]]) {
      await page.fill(id, String(v));
    }

    // Bad combinations get plain messages and no Start.
    await page.selectOption('#opt-mode', 'compress-then-tune');
    await page.waitForSelector('#plan-error:not([hidden])');
    assert.match(await page.textContent('#plan-error'), /compressed model.*not compressed/);
    assert.equal(await page.isDisabled('#tune-start'), true);
    await page.selectOption('#opt-mode', 'partial');
    await page.fill('#opt-partial', '3');
    await page.waitForFunction(() => /at most the model's 2 blocks/.test(document.querySelector('#plan-error').textContent));
    assert.equal(await page.isDisabled('#tune-start'), true);
    await page.fill('#opt-partial', '1');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    assert.equal(await page.getAttribute('#plan-table', 'data-device'), 'gpu');

    // Edge mode, an exit after every block: its windows planned on the GPU.
    await page.selectOption('#opt-mode', 'edge');
    await page.fill('#opt-exit-stride', '1');
    await page.fill('#opt-window-steps-power', '1');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled &&
      /exits/.test(document.querySelector('#plan-table [data-key=exits]')?.textContent ?? ''));
    assert.match(await page.textContent('#mode-note'), /train one window of blocks at a time: the blocks below it run forward only/);
    assert.match(await page.textContent('#plan-status'), /^Runs on the GPU and needs .* of GPU memory/);
    assert.equal(await page.textContent('#plan-table [data-key=exits] td'), '1, 2');
    assert.match(await page.textContent('#plan-table [data-key=windows] td'),
      /window 1 \(block 1, exit after 1, LR × 0\.25\); window 2 \(block 2, exit after 2\); reference order/);

    await page.click('#tune-start');
    assert.equal(await until((n) => Number(document.body.dataset.savedStep || 0) >= n, 4), 'ok');
    assert.equal(await page.getAttribute('#tune-gpu', 'data-device'), 'gpu');
    assert.match(await page.textContent('#tune-gpu'), /exactly the plan/);
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    const run = await page.evaluate(() => ({
      history: window.edgeLlmTune.history,
      windows: document.querySelector('#loss-plot').dataset.windows,
      points: Number(document.querySelector('#loss-plot').dataset.trainPoints),
      legend: [...document.querySelectorAll('#loss-legend .window')].map((e) => e.textContent),
    }));
    const train = run.history.train;
    console.log(`edge losses: ${train.map(([s, v, w]) => `${s}:w${w}:${v.toFixed(3)}`).join(' ')}; ` +
      `validation ${run.history.val.map(([s, v]) => `${s}:${v.toFixed(3)}`).join(' ')}`);
    assert.deepEqual(train.map((p) => p[0]), Array.from({ length: EDGE_STEPS }, (_, i) => i + 1));
    assert.deepEqual(train.map((p) => p[2]), Array.from({ length: EDGE_STEPS }, (_, i) => (i < EDGE_WINDOW_0_STEPS ? 0 : 1)),
      'windows 0 then 1, in order, the deeper one with more of the steps');
    assert.equal(run.points, EDGE_STEPS);
    assert.equal(run.windows, '0,1', 'the plot colours the losses by window');
    assert.deepEqual(run.legend, [' training loss, window 1 (block 1, exit after 1, LR × 0.25)',
      ' training loss, window 2 (block 2, exit after 2)']);
    for (const w of [0, 1]) {
      const losses = train.filter((p) => p[2] === w).map((p) => p[1]);
      assert.ok(mean(losses.slice(-2)) < mean(losses.slice(0, 2)), `window ${w}'s loss falls: ${losses.join(', ')}`);
    }
    assert.ok(train[train.length - 1][1] < train[0][1] - 0.3, 'the loss falls over the run');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'edge-done.png'), fullPage: true });

    // The same run natively on the GPU engine: the same windows and losses.
    checkNativeSteps(EDGE_FLAGS, train, 'edge-llm tune --mode edge --device gpu');

    // The adapter: the PEFT pair and exits.safetensors (both exits, trained).
    const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'edge-adapter-'));
    const files = await downloadAdapter(page, dir);
    assert.deepEqual(Object.keys(files).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'exits.safetensors']);
    const exits = safetensorsHeader(files['exits.safetensors']);
    assert.deepEqual(Object.keys(exits).filter((n) => n !== '__metadata__').sort(),
      ['exit.1.lora_A.weight', 'exit.1.lora_B.weight', 'exit.2.lora_A.weight', 'exit.2.lora_B.weight']);
    assert.deepEqual(exits['exit.1.lora_A.weight'].shape, [4, 64]);
    assert.deepEqual(exits['exit.2.lora_B.weight'].shape, [64, 4]);
    for (const k of [1, 2]) {
      const t = exits[`exit.${k}.lora_B.weight`];
      const buf = files['exits.safetensors'];
      const at = buf.byteOffset + 8 + Number(buf.readBigUInt64LE(0)) + t.data_offsets[0];
      const b = new Float32Array(buf.buffer.slice(at, at + t.data_offsets[1] - t.data_offsets[0]));
      assert.ok(b.some((x) => x !== 0) && b.every(Number.isFinite), `exit ${k}'s lora_B was trained`);
    }

    // Accuracy per exit and per voting rule, on the GPU with the tuned adapter.
    assert.equal(await page.isChecked('input[name=eval-source][value=tuned]'), true);
    const mc = async () => {
      await page.evaluate(() => { delete document.querySelector('#mc-status').dataset.accuracy; });
      await page.fill('#mc-n', String(EDGE_MC_QUESTIONS));
      await page.click('#mc-run');
      assert.equal(await untilEval(() => document.querySelector('#mc-status').dataset.accuracy !== undefined), 'ok');
      return page.evaluate(() => ({
        accuracy: Number(document.querySelector('#mc-status').dataset.accuracy),
        status: document.querySelector('#mc-status').textContent,
        rows: Object.fromEntries([...document.querySelectorAll('#mc-exits tbody tr')]
          .map((tr) => [tr.dataset.key, Number(tr.dataset.accuracy)])),
        questions: document.querySelectorAll('#mc-table tbody tr').length,
      }));
    };
    const tuned = await mc();
    console.log(`edge accuracy on ${EDGE_MC_QUESTIONS} questions: ${JSON.stringify(tuned.rows)}; ${tuned.status}`);
    assert.deepEqual(Object.keys(tuned.rows),
      ['exit-1', 'exit-2', 'vote-max', 'vote-mean', 'vote-majority', 'vote-last', 'vote-fitted']);
    assert.equal(tuned.accuracy, tuned.rows['vote-last'], 'the chosen rule (last, the default) is the headline accuracy');
    assert.equal(tuned.rows['vote-last'], tuned.rows['exit-2'], 'voting by the last exit is that exit alone');
    assert.match(tuned.status, /voted by last over exits after blocks 1, 2 \(GPU\)/);
    assert.equal(tuned.questions, EDGE_MC_QUESTIONS);
    assert.equal(await page.getAttribute('#eval-model-status', 'data-exits'), '1,2');
    // The CLI on the downloaded directory (exits.safetensors beside the PEFT pair) agrees.
    const cli = cliJson(['eval-mc', '--model', TINY, '--adapter', dir, '--data',
      path.join(ROOT, 'data', 'arc-easy', 'validation.jsonl'), '--limit', String(EDGE_MC_QUESTIONS),
      '--vote', 'max', '--device', 'cpu']);
    if (cli) {
      const r = cli[cli.length - 1];
      const rows = Object.fromEntries([...r.exits.map((e) => [`exit-${e.after}`, e.accuracy]),
        ...r.votes.map((v) => [`vote-${v.rule}`, v.accuracy]), ['vote-fitted', r.fitted.accuracy]]);
      assert.deepEqual(tuned.rows, rows, 'edge-llm eval-mc --vote on the downloaded adapter');
    }

    // Chat samples the voted distribution.
    await page.fill('#chat-input', 'The cat sat on');
    await page.uncheck('#chat-template');
    await page.fill('#chat-max', String(CHAT_TOKENS));
    await page.click('#chat-send');
    assert.equal(await untilEval(() => document.querySelector('#chat-status').dataset.tokens !== undefined), 'ok');
    assert.equal(await page.getAttribute('#chat-status', 'data-vote'), 'last');
    assert.ok(Number(await page.getAttribute('#chat-status', 'data-tokens')) >= 1);

    // The three downloaded files loaded back: the same accuracies, exit by exit.
    await page.setInputFiles('#adapter-files', ['adapter_model.safetensors', 'adapter_config.json', 'exits.safetensors']
      .map((f) => path.join(dir, f)));
    await page.waitForFunction(() => document.querySelector('input[name=eval-source][value=file]').checked);
    await page.waitForFunction(() => !document.querySelector('#mc-run').disabled);
    const fromDisk = await mc();
    assert.deepEqual(fromDisk.rows, tuned.rows, 'the adapter from disk votes as the tuned one');
    await page.screenshot({ path: path.join(ARTIFACTS, 'edge-eval.png'), fullPage: true });

    // A checkpoint resumes only under its own schedule (through the npm wrapper, whose
    // 'auto' engine is the CPU engine on SwiftShader's software adapter).
    const refused = await page.evaluate(async (text) => {
      const m = await import('./edge-llm.js');
      const model = await m.loadModel('models/tiny.gguf');
      const options = { steps: 4, seq_len: 32, accum: 1, lora_rank: 4, mode: 'edge', exit_stride: 1 };
      const a = await model.tuner({ text, name: 'song.txt', options });
      const r = await a.runStep();
      const bytes = await a.checkpoint();
      const b = await model.tuner({ text, name: 'song.txt', options: { ...options, exit_stride: 2 } });
      let message = null;
      try { await b.resume(bytes); } catch (e) { message = e.message; }
      const c = await model.tuner({ text, name: 'song.txt', options });
      const at = await c.resume(bytes);
      const out = { message, device: a.device, reason: a.deviceReason, window: r.window, stepDevice: r.device, at };
      for (const x of [a, b, c, model]) x.free();
      return out;
    }, TEXT);
    assert.equal(refused.device, 'cpu');
    assert.match(refused.reason, /software adapter/);
    assert.equal(refused.stepDevice, 'cpu');
    assert.equal(refused.window, 0);
    assert.equal(refused.at, 1, 'the same settings resume');
    assert.match(refused.message ?? '', /another mode, exit stride, partial layers or window schedule/);

    assert.equal(await page.isHidden('#tune-error'), true, await page.textContent('#tune-error'));
    assert.equal(await page.isHidden('#eval-error'), true, await page.textContent('#eval-error'));
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'edge-last.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

// Partial mode in the page: LoRA on the last block only (of the tiny model's 2), on the GPU in
// the worker; the same losses as `edge-llm tune --mode partial --partial-layers 1` natively,
// and in the downloaded adapter only that block's LoRA moved.
const PARTIAL_STEPS = 8;
const PARTIAL_FLAGS = ['--steps', String(PARTIAL_STEPS), '--lr', '0.01', '--seq-len', '32', '--eval-every', '4',
  '--accum', '1', '--lora-rank', '4', '--seed', '0', '--mode', 'partial', '--partial-layers', '1'];

test('partial mode: the last block tuned on the GPU, the CLI\'s losses, only that block\'s LoRA moved', async () => {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await ready(page);
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    await page.selectOption('#opt-mode', 'partial');
    // The GPU engine, forced: auto would pick the CPU engine on SwiftShader.
    await page.selectOption('#opt-device', 'gpu');
    for (const [id, v] of [['#opt-steps', PARTIAL_STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 4],
      ['#opt-save', 4], ['#opt-accum', 1], ['#opt-rank', 4], ['#opt-partial', 1]]) {
      await page.fill(id, String(v));
    }
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled &&
      /block 2/.test(document.querySelector('#plan-table [data-key=windows]')?.textContent ?? ''));
    await page.click('#tune-start');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.tuneState));
    assert.equal(await page.isHidden('#tune-error'), true, await page.textContent('#tune-error'));
    const train = await page.evaluate(() => window.edgeLlmTune.history.train);
    console.log(`partial losses: ${train.map(([s, v]) => `${s}:${v.toFixed(3)}`).join(' ')}`);
    assert.deepEqual(train.map((p) => p[0]), Array.from({ length: PARTIAL_STEPS }, (_, i) => i + 1));
    assert.ok(train[train.length - 1][1] < train[0][1] - 0.3, 'the loss falls');

    checkNativeSteps(PARTIAL_FLAGS, train, 'edge-llm tune --mode partial --device gpu');

    const files = await downloadAdapter(page, fs.mkdtempSync(path.join(ARTIFACTS, 'partial-adapter-')));
    // The frozen block's LoRA stays as initialised (B = 0: no change to the model); the tuned
    // block's B moved.
    const buf = files['adapter_model.safetensors'];
    const header = safetensorsHeader(buf);
    const tensor = (name) => {
      const t = header[name];
      const at = buf.byteOffset + 8 + Number(buf.readBigUInt64LE(0)) + t.data_offsets[0];
      return new Float32Array(buf.buffer.slice(at, at + t.data_offsets[1] - t.data_offsets[0]));
    };
    const bs = (layer) => Object.keys(header).filter((n) => n.includes(`.layers.${layer}.`) && n.endsWith('lora_B.weight'));
    assert.equal(bs(0).length, 7);
    assert.equal(bs(1).length, 7);
    for (const n of bs(0)) assert.ok(tensor(n).every((x) => x === 0), `${n} is untouched`);
    for (const n of bs(1)) assert.ok(tensor(n).some((x) => x !== 0), `${n} was trained`);
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'partial-last.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});
