// The CPU engine in the page (WebAssembly in the worker). On SwiftShader's software adapter
// the 'auto' engine picks it and says why; an edge-mode run (windows between early exits)
// gives the native CPU engine's losses (`edge-llm tune --device cpu`) within 1e-4, survives
// a reload mid-run (resumed from the IndexedDB checkpoint, on the CPU engine again),
// evaluates with voting over the exits as `edge-llm eval-mc --vote --device cpu` does on
// the downloaded adapter, and chats. Saves tests/e2e/artifacts/cpu-done.png.
// Served as a plain static host (no COOP/COEP headers), the page tunes on one thread and says
// why. Needs www/pkg and www/pkg-threads (scripts/build-wasm.sh) and www/models/tiny.gguf (written when missing).

import { test, before, after } from 'node:test';
import {
  ready, ROOT, WWW, ARTIFACTS, TINY, TEXT, serve, launchBrowser, ensureTinyModel, ensureWebData, cliJson, checkNativeSteps,
  untilIn, downloadAdapter,
} from './harness.mjs';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

const TIMEOUT_MS = 240_000;
const STEPS = 12;
const SAVE_EVERY = 4;
const MC_QUESTIONS = 20;
const CHAT_TOKENS = 8;
const FLAGS = ['--steps', String(STEPS), '--lr', '0.01', '--seq-len', '32', '--eval-every', '4',
  '--accum', '1', '--lora-rank', '4', '--seed', '0', '--mode', 'edge', '--exit-stride', '1',
  '--window-steps-power', '1'];
// The wasm CPU engine against the native one: the same code; matrix products may sum in
// another order (SIMD width, threads), so f32 rounding differs slightly.
const LOSS_TOL = { rel: 1e-4, abs: 1e-4 };

let server, browser, base;

before(async () => {
  for (const pkg of ['pkg', 'pkg-threads']) {
    assert.ok(fs.existsSync(path.join(WWW, pkg, 'edge_llm_bg.wasm')), `www/${pkg} is missing: run scripts/build-wasm.sh`);
  }
  ensureTinyModel();
  ensureWebData();
  ({ server, base } = await serve(WWW));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
});

test('the CPU engine in the page: auto picks it on a software adapter; edge tuning, resume, voting, chat', async () => {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  /// Waits for `fn` in the page, failing early with the tuning or evaluation error shown.
  const until = untilIn(page, ['#tune-error', '#eval-error'], { timeout: TIMEOUT_MS });
  try {
    await page.goto(`${base}?model=models/tiny.gguf`);
    await ready(page);
    assert.equal(await page.inputValue('#opt-device'), 'auto');
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    await page.selectOption('#opt-mode', 'edge');
    for (const [id, v] of [['#opt-steps', STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 4],
      ['#opt-save', SAVE_EVERY], ['#opt-accum', 1], ['#opt-rank', 4], ['#opt-exit-stride', 1],
      ['#opt-window-steps-power', 1]]) {
      await page.fill(id, String(v));
    }
    // The plan: host memory, and the rule's reason in plain words.
    assert.equal(await until(() => /^Runs on the CPU engine/.test(document.querySelector('#plan-status').textContent)
      && !document.querySelector('#tune-start').disabled), 'ok');
    assert.equal(await page.getAttribute('#plan-table', 'data-device'), 'cpu');
    const why = await page.textContent('#plan-table [data-key=device] td');
    console.log(`engine: ${why}`);
    assert.match(why, /^the CPU engine, because .* is a software adapter/);
    // Served cross-origin isolated (as scripts/run.sh serves it): the worker's CPU engine has
    // a thread per core (the threaded module), and the page says how many.
    const status = await page.textContent('#plan-status');
    console.log(status);
    assert.match(status, /in this tab \((\d+ threads|one thread: this device reports one core)\)/);

    // Start and pause after the first step (the worker takes the request between two steps), reload,
    // resume from the checkpoint saved at the pause, finish.
    // (Clicked from inside the page: a tiny model's steps take milliseconds.)
    await page.evaluate(() => new Promise((resolve) => {
      document.querySelector('#tune-start').click();
      const poll = () => {
        if (document.body.dataset.tuneState !== 'running' || window.edgeLlmTune.step < 1) return setTimeout(poll, 0);
        document.querySelector('#tune-pause').click();
        return resolve();
      };
      poll();
    }));
    assert.equal(await until(() => document.body.dataset.tuneState === 'paused'), 'ok');
    assert.equal(await page.getAttribute('#tune-gpu', 'data-device'), 'cpu');
    const saved = Number(await page.evaluate(() => document.body.dataset.savedStep));
    assert.ok(saved >= 1 && saved < STEPS, `paused at step ${saved} of ${STEPS}`);
    await page.reload();
    await ready(page);
    await page.waitForSelector('#saved-run:not([hidden])');
    assert.equal(await page.inputValue('#opt-device'), 'auto', 'the saved run keeps its engine setting');
    await page.click('#resume-saved');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    assert.equal(await page.getAttribute('#tune-gpu', 'data-device'), 'cpu');
    const train = await page.evaluate(() => window.edgeLlmTune.history.train);
    assert.deepEqual(train.map((p) => p[0]), Array.from({ length: STEPS }, (_, i) => i + 1));
    assert.ok(train[train.length - 1][1] < train[0][1] - 0.3, 'the loss falls over the run');
    checkNativeSteps(FLAGS, train, 'edge-llm tune --mode edge --device cpu', { device: 'cpu', ...LOSS_TOL });

    // The adapter, downloaded for the CLI's cross-check.
    const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'cpu-adapter-'));
    await downloadAdapter(page, dir);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'exits.safetensors']);

    // Accuracy per exit and per rule on the CPU engine, as the CLI's on the same files.
    await page.waitForFunction(() => document.querySelector('input[name=eval-source][value=tuned]').checked);
    await page.fill('#mc-n', String(MC_QUESTIONS));
    await page.click('#mc-run');
    assert.equal(await until(() => document.querySelector('#mc-status').dataset.accuracy !== undefined), 'ok');
    const rows = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#mc-exits tbody tr')]
      .map((tr) => [tr.dataset.key, Number(tr.dataset.accuracy)])));
    assert.match(await page.textContent('#mc-status'), /voted by last over exits after blocks 1, 2 \(CPU\)/);
    assert.equal(await page.getAttribute('#eval-model-status', 'data-device'), 'cpu');
    const cli = cliJson(['eval-mc', '--model', TINY, '--adapter', dir, '--data',
      path.join(ROOT, 'data', 'arc-easy', 'validation.jsonl'), '--limit', String(MC_QUESTIONS),
      '--vote', 'max', '--device', 'cpu']);
    if (cli) {
      const r = cli[cli.length - 1];
      assert.deepEqual(rows, Object.fromEntries([...r.exits.map((e) => [`exit-${e.after}`, e.accuracy]),
        ...r.votes.map((v) => [`vote-${v.rule}`, v.accuracy]), ['vote-fitted', r.fitted.accuracy]]),
        'edge-llm eval-mc --vote --device cpu agrees');
    }

    // Chat on the CPU engine samples the voted distribution.
    await page.fill('#chat-input', 'The cat sat on');
    await page.uncheck('#chat-template');
    await page.fill('#chat-max', String(CHAT_TOKENS));
    await page.click('#chat-send');
    assert.equal(await until(() => document.querySelector('#chat-status').dataset.tokens !== undefined), 'ok');
    assert.equal(await page.getAttribute('#chat-status', 'data-vote'), 'last');
    assert.ok(Number(await page.getAttribute('#chat-status', 'data-tokens')) >= 1);
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'cpu-done.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

test('a static host without COOP/COEP headers: the CPU engine tunes on one thread and the page says why', async () => {
  const plain = await serve(WWW, { isolation: false });
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const until = untilIn(page, ['#tune-error'], { timeout: TIMEOUT_MS });
  try {
    await page.goto(`${plain.base}?model=models/tiny.gguf`);
    await ready(page);
    assert.equal(await page.evaluate(() => self.crossOriginIsolated), false);
    await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
    await page.fill('#opt-steps', '2');
    await page.fill('#opt-seq', '32');
    assert.equal(await until(() => /^Runs on the CPU engine/.test(document.querySelector('#plan-status').textContent)
      && !document.querySelector('#tune-start').disabled), 'ok');
    assert.match(await page.textContent('#plan-status'), /\(one thread: the page is not cross-origin isolated/);
    await page.click('#tune-start');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    const train = await page.evaluate(() => window.edgeLlmTune.history.train);
    assert.equal(train.length, 2);
  } finally {
    await page.close();
    plain.server.kill();
  }
});
