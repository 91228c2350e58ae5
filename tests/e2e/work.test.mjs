// A first-time user's journey on the page (the seeded TINY model, the CPU engine that 'auto'
// picks on SwiftShader): nothing the user does loses work (a bad model file keeps the model
// and the finished adapter, a new run keeps the old adapter downloadable, Cancel says so at
// once and the page starts again after it), the states are honest ('done' only when the run
// has ended, the remaining time measured before it is guessed, counts while evaluating, chat
// rates that are rates, the saved run's settings in the form after a reload), the estimate
// before Start with smaller settings offered when it is long, and settings errors in plain
// words beside their field; before a new run, the user chooses what becomes of a finished
// adapter not downloaded; the base model id adapter_config.json names, given on the page.
// Saves tests/e2e/artifacts/work-*.png. Needs www/pkg (scripts/build-wasm.sh).

import { test, before, after } from 'node:test';
import {
  WWW, ARTIFACTS, TINY, TEXT, serve, launchBrowser, ensureTinyModel, ready, untilIn, downloadAdapter,
} from './harness.mjs';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const TIMEOUT_MS = 240_000;
const STEPS = 6;
// A run long enough to cancel or pause in its middle (a tiny model's step takes milliseconds).
const LONG_STEPS = 100_000;

let server, browser, base;

before(async () => {
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'edge_llm.js')), 'www/pkg is missing: run scripts/build-wasm.sh');
  ensureTinyModel();
  ({ server, base } = await serve(WWW));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
});

/// A page on the tiny model with the song text and a short run's settings, ready to start.
async function openRun(context, steps = STEPS) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  await page.goto(`${base}?model=models/tiny.gguf`);
  await ready(page);
  await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
  for (const [id, v] of [['#opt-steps', steps], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 2],
    ['#opt-save', 2], ['#opt-accum', 1], ['#opt-rank', 4]]) {
    await page.fill(id, String(v));
  }
  await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
  return { page, errors, until: untilIn(page, ['#tune-error', '#eval-error'], { timeout: TIMEOUT_MS }) };
}

/// Clicks Start from inside the page (and `confirm`, the choice for a finished adapter not
/// downloaded: 'keep', 'discard' or 'download', when given), then `then` ('pause' or
/// 'cancel') once a step has run; resolves to the status line right after that click.
const startThen = (page, then, confirm = null) => page.evaluate(([which, choice]) => new Promise((resolve) => {
  document.querySelector('#tune-start').click();
  let asked = !choice;
  const poll = () => {
    if (!asked && !document.querySelector('#start-confirm').hidden) {
      asked = true;
      document.querySelector(`#confirm-${choice}`).click();
    }
    if (document.body.dataset.tuneState !== 'running' || window.edgeLlmTune.step < 1) return setTimeout(poll, 0);
    document.querySelector(`#tune-${which}`).click();
    return resolve(document.querySelector('#tune-status').textContent);
  };
  poll();
}), [then, confirm]);

test('no action loses work: bad model files, a new run, cancel', async () => {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const { page, errors, until } = await openRun(context);
  try {
    const label = await page.textContent('#model-status');
    assert.match(label, /^Loaded edge-llm tiny test model \([A-Z0-9_]+, [\d.]+ MB\)\.$/);
    await page.click('#tune-start');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    await page.waitForFunction(() => document.body.dataset.keptAdapter !== undefined);
    const points = await page.getAttribute('#loss-plot', 'data-train-points');
    assert.equal(points, String(STEPS));

    // A text file, then a GGUF cut short, as the model: each is refused, and the model, the
    // finished run, its plot and its adapter stay.
    const tiny = fs.readFileSync(TINY);
    for (const [name, buffer, why] of [
      ['notes.txt', Buffer.from('just some notes\n'), /^Could not load notes\.txt: .*not a GGUF model file: it starts with "just"/],
      ['cut.gguf', tiny.subarray(0, Math.floor((tiny.length * 3) / 4)), /^Could not load cut\.gguf: .*truncated/],
    ]) {
      await page.setInputFiles('#model-file', { name, mimeType: 'application/octet-stream', buffer });
      await page.waitForFunction((re) => new RegExp(re).test(document.querySelector('#model-error').textContent), why.source);
      const message = await page.textContent('#model-error');
      console.log(message);
      assert.match(message, /The model loaded before, edge-llm tiny test model \([A-Z0-9_]+, [\d.]+ MB\), is still the one in use/);
      assert.equal(await page.textContent('#model-status'), label);
      assert.equal(await page.evaluate(() => document.body.dataset.tuneState), 'done');
      assert.equal(await page.getAttribute('#loss-plot', 'data-train-points'), points);
      assert.equal(await page.isDisabled('#tune-download'), false);
      assert.equal(await page.isDisabled('#tune-start'), false);
    }

    // A new run before downloading: asked first, the first adapter stays, kept in the
    // browser, and downloads from the list; the new one from the button.
    const firstKept = await page.evaluate(() => document.body.dataset.keptAdapter);
    await page.click('#tune-start');
    await page.click('#confirm-keep');
    assert.equal(await until((k) => document.body.dataset.tuneState === 'done' &&
      ![undefined, k].includes(document.body.dataset.keptAdapter), firstKept), 'ok');
    await page.waitForSelector('#kept-list li .kept-download');
    assert.equal(await page.locator('#kept-list li').count(), 1);
    const [kept] = await Promise.all([page.waitForEvent('download'), page.click('#kept-list li .kept-download')]);
    assert.equal(kept.suggestedFilename(), 'edge-llm-adapter.zip');
    await page.waitForSelector('#kept-adapters', { state: 'hidden' });
    const files = await downloadAdapter(page, fs.mkdtempSync(path.join(ARTIFACTS, 'work-adapter-')));
    assert.deepEqual(Object.keys(files).sort(), ['adapter_config.json', 'adapter_model.safetensors']);

    // Cancel: said at once, and the page starts again without a reload.
    await page.fill('#opt-steps', String(LONG_STEPS));
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    const right = await startThen(page, 'cancel');
    assert.match(right, /cancelling…/, `right after Cancel: ${right}`);
    assert.equal(await until(() => document.body.dataset.tuneState === 'cancelled'), 'ok');
    await page.fill('#opt-steps', String(STEPS));
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    await page.click('#tune-start');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    assert.deepEqual(errors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'work-kept.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

test('without a model Start stays disabled', async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${base}?model=models/missing.gguf`);
    await ready(page);
    assert.equal(await page.textContent('#model-status'), 'No default model.');
    assert.equal(await page.isDisabled('#tune-start'), true);
    assert.equal(await page.isDisabled('#chat-send'), true);
  } finally {
    await page.close();
  }
});

test('honest states: measured before guessed, done only when ended, counts, rates, the saved run in the form', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
  const { page, errors, until } = await openRun(context);
  try {
    // Every status line of the run, with the Pause button and the state at that moment.
    await page.evaluate(() => {
      window.seen = [];
      new MutationObserver(() => window.seen.push({
        text: document.querySelector('#tune-status').textContent,
        pause: !document.querySelector('#tune-pause').disabled,
        state: document.body.dataset.tuneState,
      })).observe(document.querySelector('#tune-status'), { childList: true, characterData: true, subtree: true });
    });
    await page.click('#tune-start');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    const seen = await page.evaluate(() => window.seen);
    const first = seen.find((s) => /^Step 0 of/.test(s.text));
    assert.ok(first, seen.map((s) => s.text).join('\n'));
    assert.match(first.text, /remaining: measuring…/);
    for (const s of seen) {
      assert.ok(!(/finishing/.test(s.text) && s.pause), `Pause enabled while finishing: ${s.text}`);
      assert.ok(!/· done/.test(s.text) || s.state === 'done', `'done' in state ${s.state}: ${s.text}`);
    }

    // Chat with a one-token reply: no rate of 0.0.
    await page.fill('#chat-input', 'The cat sat on');
    await page.uncheck('#chat-template');
    await page.fill('#chat-max', '1');
    await page.click('#chat-send');
    assert.equal(await until(() => document.querySelector('#chat-status').dataset.tokens !== undefined), 'ok');
    const chat = await page.textContent('#chat-status');
    console.log(chat);
    assert.doesNotMatch(chat, /\b0\.0+ tokens\/s/);
    assert.match(chat, /^1 token in [\d.]+ m?s \(the \d+-token prompt took /);

    // Perplexity on the GPU engine (forced; its forward takes the whole text at once unless
    // cut into counted pieces): a count while scoring, from the first moment.
    await page.check('input[name=eval-source][value=base]');
    await page.selectOption('#opt-device', 'gpu');
    await page.fill('#ppl-max', '128');
    await page.evaluate(() => {
      window.ppl = [];
      new MutationObserver(() => window.ppl.push(document.querySelector('#ppl-status').textContent))
        .observe(document.querySelector('#ppl-status'), { childList: true, characterData: true, subtree: true });
    });
    await page.click('#ppl-run');
    assert.equal(await until(() => document.querySelector('#ppl-status').dataset.perplexity !== undefined), 'ok');
    const ppl = await page.evaluate(() => window.ppl);
    console.log(ppl.join('\n'));
    assert.match(ppl[0], /^Scoring up to 128 tokens of song\.txt with the base model · 0:0\d…$/);
    assert.ok(ppl.some((t) => /: 64 of 128 tokens · /.test(t)), 'a count after the first piece');
    await page.selectOption('#opt-device', 'auto');

    // Reload in the middle of a run: the form shows the saved run's settings and data.
    await page.fill('#opt-steps', String(LONG_STEPS));
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    // (The finished run's adapter, not downloaded: asked first, and kept.)
    await startThen(page, 'pause', 'keep');
    assert.equal(await until(() => document.body.dataset.tuneState === 'paused'), 'ok');
    await page.reload();
    await ready(page);
    await page.waitForSelector('#saved-run:not([hidden])');
    assert.equal(await page.inputValue('#opt-steps'), String(LONG_STEPS));
    assert.equal(await page.inputValue('#opt-seq'), '32');
    assert.equal(await page.isChecked('input[name=data-source][value=file]'), true);
    await page.waitForFunction(() => /^song\.txt: /.test(document.querySelector('#data-status').textContent));
    assert.deepEqual(errors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'work-states.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

test('an estimate before Start, smaller settings offered when it is long; plain messages beside the field', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
  const { page, errors } = await openRun(context);
  try {
    await page.waitForFunction((n) => document.querySelector('#estimate').dataset.seconds !== undefined &&
      document.querySelector('#estimate').textContent.startsWith(`${n} steps`), STEPS);
    const estimate = await page.textContent('#estimate');
    console.log(estimate);
    assert.match(estimate, /^6 steps take (under a minute|about \d+ min) on this device \(measured here: [\d.]+ tokens\/s/);

    await page.fill('#opt-steps', '100000000');
    await page.waitForSelector('#use-suggested');
    assert.match(await page.textContent('#estimate'), /take about [\d.]+ hours .* That is long for a first try/);
    await page.click('#use-suggested');
    await page.waitForFunction(() => document.querySelector('#opt-steps').value !== '100000000' &&
      document.querySelector('#estimate').dataset.seconds !== undefined &&
      !document.querySelector('#estimate').classList.contains('long'));
    const steps = Number(await page.inputValue('#opt-steps'));
    assert.ok(steps >= 1 && steps < 100000000, `suggested ${steps} steps`);
    assert.equal(await page.inputValue('#opt-accum'), '1');
    assert.equal(await page.inputValue('#opt-eval'), '0');
    assert.ok(Number(await page.getAttribute('#estimate', 'data-seconds')) < 15 * 60);

    // A setting the engine refuses: plain words, the field outlined, no plan left beside it.
    await page.fill('#opt-rank', '2000');
    await page.waitForSelector('#plan-error:not([hidden])');
    const message = await page.textContent('#plan-error');
    assert.match(message, /^The LoRA rank must be between 1 and 1024 \(it is 2000\)/);
    assert.doesNotMatch(message, /--|\.\.=/);
    assert.equal(await page.getAttribute('#opt-rank', 'aria-invalid'), 'true');
    assert.match(await page.textContent('#opt-rank + .field-error'), /between 1 and 1024/);
    assert.equal(await page.isHidden('#plan-table'), true);
    assert.equal(await page.isHidden('#estimate'), true);
    assert.equal(await page.textContent('#plan-status'), 'These settings cannot run.');
    assert.equal(await page.isDisabled('#tune-start'), true);
    await page.fill('#opt-rank', '4');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    assert.equal(await page.getAttribute('#opt-rank', 'aria-invalid'), null);
    // Rows too long for a tab's memory: the field outlined, the message says what to do.
    await page.fill('#opt-seq', '100000');
    await page.waitForSelector('#opt-seq[aria-invalid=true]');
    assert.match(await page.textContent('#plan-error'),
      /^Tuning this model on the CPU needs about [\d.]+ GiB of memory with rows of 100000 tokens.*: use shorter rows/);
    assert.equal(await page.textContent('#plan-status'), 'This run does not fit.');
    await page.fill('#opt-seq', '32');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);

    // The data in plain words: examples to train on and held out, and why none is held out.
    assert.match(await page.textContent('#data-status'),
      /^song\.txt: [\d.]+ KiB of plain text, in \d+ pieces of up to 32 tokens → \d+ to train on, \d+ held out to check progress/);
    await page.setInputFiles('#data-file', { name: 'one.txt', mimeType: 'text/plain', buffer: Buffer.from('A short line.\n') });
    await page.waitForFunction(() => /^one\.txt: /.test(document.querySelector('#data-status').textContent));
    assert.match(await page.textContent('#data-status'), /none held out to check progress: there are too few/);
    // Examples whose prompt fills the row: skipped, said as a warning with what to do.
    const long = 'word '.repeat(60);
    const jsonl = [`{"prompt": "${long}", "response": " yes"}`, '{"prompt": "Hi", "response": " there"}',
      '{"prompt": "Sky?", "response": " blue"}'].join('\n');
    await page.setInputFiles('#data-file', { name: 'qa.jsonl', mimeType: 'application/json', buffer: Buffer.from(jsonl) });
    await page.waitForSelector('#data-note:not([hidden])');
    assert.match(await page.textContent('#data-status'), /^qa\.jsonl: 3 examples \(a prompt and its response each\) → /);
    assert.match(await page.textContent('#data-note'), /^1 example is skipped: the prompt alone fills the 32 tokens per row/);
    assert.deepEqual(errors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'work-plain.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

/// The adapter_config.json of a zip download.
async function configOf(download) {
  const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'work-zip-'));
  const zip = path.join(dir, download.suggestedFilename());
  await download.saveAs(zip);
  execFileSync('python3', ['-m', 'zipfile', '-e', zip, dir]);
  return JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
}

test('before a new run the finished adapter is downloaded, kept or discarded; the base model id', async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1000 } });
  const { page, errors, until } = await openRun(context);
  let downloads = 0;
  page.on('download', () => { downloads += 1; });
  // Done, with its adapter kept: a new one (not `before`'s, the run the page showed before).
  const kept = () => page.evaluate(() => document.body.dataset.keptAdapter ?? null);
  const done = (before = null) => until((b) => document.body.dataset.tuneState === 'done' &&
    document.body.dataset.keptAdapter !== undefined && document.body.dataset.keptAdapter !== b, before);
  try {
    await page.click('#tune-start');
    assert.equal(await done(), 'ok');
    // The tiny model is not one Hugging Face knows: the field says what an empty one names.
    assert.match(await page.textContent('#base-model-note'), /^Empty: the model file's own name, which Hugging Face's loaders cannot find/);

    // Start asks; Back leaves everything as it was.
    await page.click('#tune-start');
    await page.waitForSelector('#start-confirm:not([hidden])');
    assert.equal(await page.evaluate(() => document.body.dataset.tuneState), 'done');
    await page.click('#confirm-back');
    await page.waitForSelector('#start-confirm', { state: 'hidden' });
    assert.equal(await page.evaluate(() => document.body.dataset.tuneState), 'done');

    // A base model id that is not one: said under the field, and nothing downloads.
    await page.fill('#base-model', 'my model');
    await page.waitForSelector('#base-model-error:not([hidden])');
    const wrong = await page.textContent('#base-model-error');
    console.log(wrong);
    assert.match(wrong, /^The base model id "my model" is not of the form owner\/name: give it as owner\/name, as on huggingface\.co/);
    assert.equal(await page.getAttribute('#base-model', 'aria-invalid'), 'true');
    await page.click('#tune-download');
    await page.waitForTimeout(1000);
    assert.equal(downloads, 0, 'no download with a wrong id');
    assert.equal(await page.isVisible('#adapter-links'), false);
    await page.fill('#base-model', '');
    await page.waitForSelector('#base-model-error', { state: 'hidden' });

    // Download, then start: the file's own name as the base (the field is empty).
    let before = await kept();
    await page.click('#tune-start');
    const [first] = await Promise.all([page.waitForEvent('download'), page.click('#confirm-download')]);
    assert.equal((await configOf(first)).base_model_name_or_path, 'edge-llm tiny test model');
    assert.equal(await done(before), 'ok');

    // Discard, then start: the finished adapter is gone from the browser.
    before = await kept();
    await page.click('#tune-start');
    await page.click('#confirm-discard');
    assert.equal(await done(before), 'ok');
    assert.equal(await page.isVisible('#kept-adapters'), false, 'nothing else is kept');
    const stored = await page.evaluate(() => new Promise((resolve, reject) => {
      const open = indexedDB.open('edge-llm');
      open.onerror = () => reject(open.error);
      open.onsuccess = () => {
        const db = open.result;
        const names = [...db.objectStoreNames];
        const get = db.transaction(names[0]).objectStore(names[0]).get('adapters');
        get.onsuccess = () => resolve((get.result ?? []).map((a) => ({ id: a.id, downloaded: a.downloaded })));
        get.onerror = () => reject(get.error);
      };
    }));
    const current = Number(await page.evaluate(() => document.body.dataset.keptAdapter));
    assert.deepEqual(stored.filter((a) => !a.downloaded).map((a) => a.id), [current], 'only the last run\'s adapter is kept');

    // The id given goes into adapter_config.json, from the run in the page...
    await page.fill('#base-model', 'someone/their-model');
    const dir = fs.mkdtempSync(path.join(ARTIFACTS, 'work-named-'));
    const files = await downloadAdapter(page, dir);
    assert.equal(JSON.parse(files['adapter_config.json']).base_model_name_or_path, 'someone/their-model');

    // ... and from an adapter kept in the browser, after a reload.
    before = await kept();
    await page.click('#tune-start');
    assert.equal(await done(before), 'ok');
    await page.reload();
    await ready(page);
    await page.waitForSelector('#kept-list li .kept-download');
    await page.fill('#base-model', 'other-org/other.model');
    const [fromKept] = await Promise.all([page.waitForEvent('download'), page.click('#kept-list li .kept-download')]);
    assert.equal((await configOf(fromKept)).base_model_name_or_path, 'other-org/other.model');
    assert.deepEqual(errors, [], 'uncaught errors on the page');
  } finally {
    await page.screenshot({ path: path.join(ARTIFACTS, 'work-confirm.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});
