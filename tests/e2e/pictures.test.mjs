// The page's pictures, on the seeded TINY model: the loss plot against steps and against the
// training time, the memory plan as one bar (a segment per category, against the tab's
// memory on the CPU engine and against the memory budget on the GPU), and per-exit and voted
// accuracy as bars (edge mode on the CPU engine that 'auto' picks on SwiftShader).
// Saves tests/e2e/artifacts/pictures-*.png. Needs www/pkg (scripts/build-wasm.sh).

import { test, before, after } from 'node:test';
import {
  WWW, ARTIFACTS, TEXT, serve, launchBrowser, ensureTinyModel, ensureWebData, ready, untilIn,
} from './harness.mjs';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

const TIMEOUT_MS = 240_000;
const STEPS = 6;
const MC_QUESTIONS = 12;
// A drawn bar's width against its share: within a pixel and a half (rounding of layout).
const BAR_PX_TOL = 1.5;

let server, browser, base;

before(async () => {
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'edge_llm.js')), 'www/pkg is missing: run scripts/build-wasm.sh');
  ensureTinyModel();
  ensureWebData();  // ARC-Easy validation for the accuracy bars
  ({ server, base } = await serve(WWW));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
});

async function openPage() {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.setDefaultTimeout(TIMEOUT_MS);
  await page.goto(`${base}?model=models/tiny.gguf`);
  await ready(page);
  await page.setInputFiles('#data-file', { name: 'song.txt', mimeType: 'text/plain', buffer: Buffer.from(TEXT) });
  for (const [id, v] of [['#opt-steps', STEPS], ['#opt-lr', 0.01], ['#opt-seq', 32], ['#opt-eval', 2],
    ['#opt-save', 2], ['#opt-accum', 1], ['#opt-rank', 4]]) {
    await page.fill(id, String(v));
  }
  await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
  return { page, errors, until: untilIn(page, ['#tune-error', '#eval-error', '#plan-error'], { timeout: TIMEOUT_MS }) };
}

/// The plan's bar as drawn: its segments ({category, bytes, px}), its width, and what it
/// was drawn against.
const planBar = (page) => page.evaluate(() => {
  const bar = document.querySelector('#plan-bar');
  return {
    shown: !document.querySelector('#plan-bar-box').hidden,
    width: bar.getBoundingClientRect().width - 2,  // less the border
    total: Number(bar.dataset.total),
    scale: Number(bar.dataset.scale),
    limit: bar.dataset.limit,
    legend: document.querySelector('#plan-bar-legend').textContent,
    segments: [...bar.querySelectorAll('.seg')].map((s) => ({
      category: s.dataset.category, bytes: Number(s.dataset.bytes), px: s.getBoundingClientRect().width,
    })),
    planTotal: Number(document.querySelector('#plan-table').dataset.totalBytes),
  };
});

/// Each segment drawn at its share of the bar's scale.
function checkWidths(bar) {
  for (const s of bar.segments) {
    const want = (bar.width * s.bytes) / bar.scale;
    assert.ok(Math.abs(s.px - Math.max(want, 1)) <= BAR_PX_TOL, `${s.category}: ${s.px} px, want ${want.toFixed(1)}`);
  }
}

test('the loss against steps and time, the memory plan as a bar', async () => {
  const { page, errors, until } = await openPage();
  try {
    // The CPU engine's plan: its categories and the model file, against the tab's memory.
    await page.waitForFunction(() => !document.querySelector('#plan-bar-box').hidden &&
      document.querySelector('#plan-table').dataset.device === 'cpu');
    const cpu = await planBar(page);
    console.log(`CPU plan bar: ${cpu.legend}`);
    assert.equal(cpu.shown, true);
    assert.equal(cpu.segments[0].category, 'the model file');
    const file = cpu.segments[0].bytes;
    assert.ok(file > 50_000 && file < 200_000, `the tiny model file's ${file} bytes`);
    assert.equal(cpu.segments.slice(1).reduce((a, s) => a + s.bytes, 0), cpu.planTotal, 'the categories add up to the plan');
    assert.equal(cpu.total, cpu.planTotal + file);
    assert.equal(Number(cpu.limit), 4 * 2 ** 30 - 512 * 2 ** 20, 'against what the tab gives the module');
    assert.equal(cpu.scale, Number(cpu.limit));
    assert.match(cpu.legend, /of 3584\.0 MiB \(0 %\): the whole bar is what this tab gives the engine/);
    checkWidths(cpu);

    // The GPU engine with a budget: the bar's whole is the budget.
    await page.selectOption('#opt-device', 'gpu');
    await page.fill('#opt-budget', '64');
    await page.waitForFunction(() => document.querySelector('#plan-table').dataset.device === 'gpu' &&
      document.querySelector('#plan-bar').dataset.limit === String(64 * 1024 * 1024));
    const gpu = await planBar(page);
    console.log(`GPU plan bar: ${gpu.legend}`);
    assert.ok(gpu.segments.length >= 3, 'weights, activations, LoRA and more');
    assert.ok(!gpu.segments.some((s) => s.category === 'the model file'), 'GPU memory only');
    assert.equal(gpu.total, gpu.planTotal);
    assert.equal(gpu.scale, 64 * 1024 * 1024);
    assert.match(gpu.legend, /of 64\.0 MiB \(\d+ %\): the whole bar is your memory budget/);
    checkWidths(gpu);
    // No budget: the bar is the plan itself.
    await page.fill('#opt-budget', '');
    await page.waitForFunction(() => document.querySelector('#plan-bar').dataset.limit === '' &&
      document.querySelector('#plan-table').dataset.device === 'gpu');
    const whole = await planBar(page);
    assert.equal(whole.scale, whole.total);
    assert.match(whole.legend, /no memory budget set/);
    assert.ok(Math.abs(whole.segments.reduce((a, s) => a + s.px, 0) - whole.width) <= BAR_PX_TOL * whole.segments.length);
    // A setting that cannot run: no plan, no bar.
    await page.fill('#opt-rank', '0');
    await page.waitForSelector('#plan-bar-box', { state: 'hidden' });
    await page.fill('#opt-rank', '4');
    await page.selectOption('#opt-device', 'auto');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled &&
      document.querySelector('#plan-table').dataset.device === 'cpu');

    // The run; then its plot against steps, and against the training time.
    await page.click('#tune-start');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    const plot = () => page.evaluate(() => {
      const c = document.querySelector('#loss-plot');
      return { axis: c.dataset.axis, xMax: Number(c.dataset.xMax), xLabel: c.dataset.xLabel, train: Number(c.dataset.trainPoints),
        val: Number(c.dataset.valPoints), image: c.toDataURL() };
    });
    const bySteps = await plot();
    assert.equal(bySteps.axis, 'steps');
    assert.equal(bySteps.xMax, STEPS);
    assert.equal(bySteps.train, STEPS);
    const history = await page.evaluate(() => window.edgeLlmTune.history);
    const times = history.train.map((p) => p[3]);
    console.log(`training times (ms): ${times.join(' ')}`);
    assert.ok(times.every((t, i) => Number.isFinite(t) && t > 0 && (i === 0 || t >= times[i - 1])),
      'each step keeps its training time, in order');
    await page.check('input[name=plot-axis][value=time]');
    const byTime = await plot();
    assert.equal(byTime.axis, 'time');
    assert.equal(byTime.train, STEPS, 'every step against its time');
    assert.equal(byTime.val, bySteps.val, 'and every validation point');
    assert.ok(byTime.val > 0);
    assert.equal(byTime.xMax, Math.max(times[times.length - 1], 1), 'the finished run spans its own time');
    assert.equal(byTime.xLabel, `${(byTime.xMax / 1000).toFixed(1)} s`, 'a short run in tenths of a second');
    assert.equal(bySteps.xLabel, `step ${STEPS}`);
    assert.notEqual(byTime.image, bySteps.image, 'the plot is drawn anew');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.locator('#tune-section').screenshot({ path: path.join(ARTIFACTS, 'pictures-tune.png') });
    await page.check('input[name=plot-axis][value=steps]');
    assert.equal((await plot()).image, bySteps.image, 'back to steps: the same picture');

    // A run not finished: against time, the axis runs to the time its steps would take at
    // the pace so far.
    await page.fill('#opt-steps', '100000');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled);
    await page.click('#tune-start');
    await page.click('#confirm-keep');  // the finished adapter stays kept
    assert.equal(await until(() => document.body.dataset.tuneState === 'running' && window.edgeLlmTune.step >= 3), 'ok');
    await page.click('#tune-pause');
    assert.equal(await until(() => document.body.dataset.tuneState === 'paused'), 'ok');
    await page.check('input[name=plot-axis][value=time]');
    const paused = await plot();
    const last = await page.evaluate(() => window.edgeLlmTune.history.train.at(-1));
    assert.equal(paused.xMax, Math.round(last[3] * (100000 / last[0])));
    assert.match(paused.xLabel, /^~(\d+:)?\d+:\d\d$/, 'the projected end, about');
    assert.deepEqual(errors, [], 'uncaught errors on the page');
  } finally {
    await page.close();
  }
});

test('per-exit and voted accuracy as bars', async () => {
  const { page, errors, until } = await openPage();
  try {
    await page.selectOption('#opt-mode', 'edge');
    await page.fill('#opt-exit-stride', '1');
    await page.fill('#opt-steps', '4');
    await page.waitForFunction(() => !document.querySelector('#tune-start').disabled &&
      /exits/.test(document.querySelector('#plan-table [data-key=exits]')?.textContent ?? ''));
    await page.click('#tune-start');
    assert.equal(await until(() => document.body.dataset.tuneState === 'done'), 'ok');
    await page.fill('#mc-n', String(MC_QUESTIONS));
    await page.click('#mc-run');
    assert.equal(await until(() => document.querySelector('#mc-status').dataset.accuracy !== undefined), 'ok');
    const rows = await page.evaluate(() => [...document.querySelectorAll('#mc-exits tbody tr')].map((tr) => {
      const track = tr.querySelector('.acc-bar');
      return {
        key: tr.dataset.key,
        accuracy: Number(tr.dataset.accuracy),
        kind: track ? [...track.classList].filter((c) => c !== 'acc-bar').join(' ') : null,
        track: track?.getBoundingClientRect().width ?? 0,
        fill: track?.querySelector('.fill').getBoundingClientRect().width ?? -1,
        colour: track ? getComputedStyle(track.querySelector('.fill')).backgroundColor : null,
      };
    }));
    console.log(rows.map((r) => `${r.key} ${r.accuracy.toFixed(3)}: ${r.fill.toFixed(1)} of ${r.track.toFixed(1)} px`).join('; '));
    assert.deepEqual(rows.map((r) => r.key),
      ['exit-1', 'exit-2', 'vote-max', 'vote-mean', 'vote-majority', 'vote-last', 'vote-fitted']);
    for (const r of rows) {
      assert.equal(r.kind, r.key.split('-')[0], `${r.key}: a bar of its kind`);
      assert.ok(r.track > 50, `${r.key}: the bar's track is drawn`);
      assert.ok(Math.abs(r.fill - r.accuracy * r.track) <= BAR_PX_TOL, `${r.key}: ${r.fill} px of ${r.track} for ${r.accuracy}`);
    }
    assert.notEqual(rows[0].colour, rows[2].colour, 'exits and votes in two colours');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.locator('#mc-box').screenshot({ path: path.join(ARTIFACTS, 'pictures-exits.png') });
    assert.deepEqual(errors, [], 'uncaught errors on the page');
  } finally {
    await page.close();
  }
});
