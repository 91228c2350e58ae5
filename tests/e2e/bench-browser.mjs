// The page's tuning speed against the native CLI's, measured in one run on this machine with
// the same settings (the real default model, ARC-Easy's training questions, 256-token rows,
// one row per step, the same seed and so the same rows): the wasm CPU engine and the
// WebGPU engine in headless Chromium, through the page's own wasm module and npm wrapper
// (www/edge-llm.js), and `edge-llm tune --device cpu` (the release build).
// Run by scripts/bench-browser.sh; prints a table, or with --json one JSON object.
//   --steps N        CPU steps per engine (default 6; the first is not counted)
//   --gpu-steps N    WebGPU steps (default 1: on a software adapter one step takes minutes;
//                    with one step the figure includes compiling the kernels)
//   --no-gpu         skip the WebGPU engine
//   --profile        also print the page CPU engine's time per kind of op (cpu::profile)

import { ROOT, WWW, DEFAULT_MODEL, serve, launchBrowser, ensureWebData } from './harness.mjs';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i < 0 ? dflt : Number(args[i + 1]);
};
const JSON_OUT = args.includes('--json');
const STEPS = flag('--steps', 6);
const GPU_STEPS = args.includes('--no-gpu') ? 0 : flag('--gpu-steps', 1);
const PROFILE = args.includes('--profile');
const SEQ = 256;
const DATA = path.join(ROOT, 'data', 'arc-easy', 'train.jsonl');
const log = (s) => process.stderr.write(`${s}\n`);
const median = (v) => { const s = [...v].sort((a, b) => a - b); return s.length ? s[(s.length - 1) >> 1] : NaN; };
/// Steady tokens/s: the median over the steps after the first (which includes warm-up), or
/// the one step when there is only one.
const steady = (v) => median(v.length > 1 ? v.slice(1) : v);

/// The native engine's FMA peak on this machine (`edge-llm bench cpu`, one short step).
function nativePeak() {
  const cli = path.join(ROOT, 'target', 'release', 'edge-llm');
  const out = execFileSync(cli, ['bench', 'cpu', '--model', DEFAULT_MODEL, '--data', DATA, '--steps', '1', '--warmup', '0', '--json'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
  const r = JSON.parse(out.slice(out.indexOf('{')));
  return { gflops: r.peak_gflops, isa: r.peak_isa };
}

function native() {
  const cli = path.join(ROOT, 'target', 'release', 'edge-llm');
  if (!fs.existsSync(cli)) throw new Error('no release CLI: cargo build --release');
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-browser-'));
  try {
    const lines = execFileSync(cli, ['tune', '--model', DEFAULT_MODEL, '--data', DATA, '--steps', String(STEPS),
      '--accum', '1', '--seq-len', String(SEQ), '--eval-every', '0', '--device', 'cpu', '--json', '--out', out],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
    const steps = lines.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
      .filter((r) => typeof r.step === 'number' && typeof r.tokens_per_s === 'number');
    return { tokensPerS: steps.map((r) => r.tokens_per_s), tokens: steps.map((r) => r.tokens), losses: steps.map((r) => r.loss) };
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

/// `steps` tuning steps on `device` in a worker of the page (as the page's own tuning worker
/// runs them), through the npm wrapper; `threads` caps the CPU engine's threads (undefined:
/// what the page gets, 1: the single-threaded module).
async function inPage(page, device, steps, threads) {
  return page.evaluate(async ({ device, steps, seq, threads, profile }) => {
    const src = `self.onmessage = async ({ data }) => {
      try {
        const m = await import(data.base + 'edge-llm.js');
        await m.init(undefined, { threads: data.threads });
        const cpu = await m.cpuThreads();
        // A first short run so that the loop is measured in optimized code (V8 starts a
        // wasm function in its baseline tier and swaps it only between calls).
        if (data.device === 'cpu') m.raw.cpuPeak(0.3);
        const peak = data.device === 'cpu' ? JSON.parse(m.raw.cpuPeak(1.0)) : null;
        const model = await m.loadModel(data.base + 'models/default.gguf');
        const text = await (await fetch(data.base + 'data/arc-easy/train.jsonl')).text();
        const t0 = performance.now();
        const tuner = await model.tuner({ text, name: 'train.jsonl', kind: 'mc',
          options: { steps: data.steps, accum: 1, seq_len: data.seq, eval_every: 0, device: data.device } });
        const r = { device: tuner.device, reason: tuner.deviceReason, createMs: performance.now() - t0,
          tokensPerS: [], losses: [], threads: cpu.threads, threadsNote: cpu.note, isolated: self.crossOriginIsolated, peak };
        for (let i = 0; i < data.steps; i++) {
          // The profile over the steady steps (after the first).
          if (data.profile && i === 1) m.raw.cpuProfile(true);
          const s = await tuner.runStep();
          r.tokensPerS.push(s.tokens_per_s);
          r.losses.push(s.loss);
        }
        if (data.profile) {
          r.profile = JSON.parse(m.raw.cpuProfileTotals());
          m.raw.cpuProfile(false);
        }
        tuner.free();
        model.free();
        postMessage({ ok: r });
      } catch (e) {
        postMessage({ error: String(e?.stack ?? e) });
      }
    };`;
    const url = URL.createObjectURL(new Blob([src], { type: 'text/javascript' }));
    const w = new Worker(url, { type: 'module' });
    try {
      return await new Promise((resolve, reject) => {
        w.onerror = (e) => reject(new Error(e.message || 'the worker failed'));
        w.onmessage = ({ data }) => (data.error ? reject(new Error(data.error)) : resolve(data.ok));
        w.postMessage({ base: new URL('.', location.href).href, device, steps, seq, threads, profile });
      });
    } finally {
      w.terminate();
    }
  }, { device, steps, seq: SEQ, threads, profile: PROFILE && device === 'cpu' });
}

ensureWebData();
const { server, base } = await serve(WWW);
const browser = await launchBrowser();
const results = {};
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(0);
  await page.goto(base);
  log(`page: the CPU engine with the threads the page gets, ${STEPS} steps…`);
  results.cpu = await inPage(page, 'cpu', STEPS, undefined);
  log(`page: the CPU engine on one thread, ${STEPS} steps…`);
  results.cpu1 = await inPage(page, 'cpu', STEPS, 1);
  if (GPU_STEPS > 0) {
    log(`page: the WebGPU engine, ${GPU_STEPS} step(s) (minutes on a software adapter)…`);
    results.gpu = await inPage(page, 'gpu', GPU_STEPS);
  }
  log(`native: edge-llm tune --device cpu, ${STEPS} steps…`);
  results.native = native();
  results.nativePeak = nativePeak();
} finally {
  await browser.close();
  server.kill();
}

const pageCpu = steady(results.cpu.tokensPerS);
const pageCpu1 = steady(results.cpu1.tokensPerS);
const nativeCpu = steady(results.native.tokensPerS);
const pageGpu = results.gpu ? steady(results.gpu.tokensPerS) : null;
const maxLossDiff = Math.max(...[results.cpu, results.cpu1].flatMap((r) =>
  r.losses.map((l, i) => Math.abs(l - results.native.losses[i]))));
const summary = {
  settings: { model: path.basename(fs.realpathSync(DEFAULT_MODEL)), data: 'arc-easy/train.jsonl', seq_len: SEQ,
    rows_per_step: 1, steps: STEPS, gpu_steps: GPU_STEPS, tokens_per_step: results.native.tokens[0] },
  page_cpu_tokens_per_s: pageCpu,
  page_cpu_1thread_tokens_per_s: pageCpu1,
  page_cpu_threads: results.cpu.threads,
  page_cpu_threads_note: results.cpu.threadsNote,
  page_cross_origin_isolated: results.cpu.isolated,
  page_gpu_tokens_per_s: pageGpu,
  page_gpu_adapter: results.gpu?.reason ?? null,
  native_cpu_tokens_per_s: nativeCpu,
  page_cpu_over_native: pageCpu / nativeCpu,
  page_cpu_1thread_over_native: pageCpu1 / nativeCpu,
  page_cpu_threads_speedup: pageCpu / pageCpu1,
  page_gpu_over_native: pageGpu === null ? null : pageGpu / nativeCpu,
  page_cpu_over_page_gpu: pageGpu === null ? null : pageCpu / pageGpu,
  page_cpu_vs_native_max_loss_diff: maxLossDiff,
  // The floating-point peak each engine can issue on this machine (multiply-add chains on
  // every thread): the page's SIMD128 has 4 lanes and no FMA.
  page_cpu_peak_gflops: results.cpu.peak.gflops,
  page_cpu_peak_isa: results.cpu.peak.isa,
  page_cpu_1thread_peak_gflops: results.cpu1.peak.gflops,
  native_cpu_peak_gflops: results.nativePeak.gflops,
  native_cpu_peak_isa: results.nativePeak.isa,
  page_peak_over_native_peak: results.cpu.peak.gflops / results.nativePeak.gflops,
  per_step: { page_cpu: results.cpu.tokensPerS, page_cpu_1thread: results.cpu1.tokensPerS, page_gpu: results.gpu?.tokensPerS ?? null, native_cpu: results.native.tokensPerS },
};
if (PROFILE) {
  summary.profile = { page_cpu: results.cpu.profile, page_cpu_1thread: results.cpu1.profile };
  for (const [name, rows] of Object.entries(summary.profile)) {
    const total = rows.reduce((a, r) => a + r.seconds, 0);
    log(`\n${name}: time per kind of op over steps 2..${STEPS}`);
    for (const r of rows) {
      log(`  ${r.op.padEnd(26)} ${r.seconds.toFixed(3).padStart(8)} s ${(100 * r.seconds / total).toFixed(1).padStart(5)} % ` +
        `${String(r.calls).padStart(7)} calls ${r.gflops.toFixed(1).padStart(7)} GFLOP/s`);
    }
  }
}
if (JSON_OUT) {
  console.log(JSON.stringify(summary, null, 2));
} else {
  const f = (x, d = 1) => (x === null ? '—' : x.toFixed(d));
  console.log([
    `Tuning speed, ${summary.settings.model}, ARC-Easy, ${summary.settings.tokens_per_step}-token rows, 1 row/step, ` +
      `steady median of steps 2..${STEPS} (GPU: ${GPU_STEPS} step${GPU_STEPS === 1 ? ', compilation included' : 's'})`,
    '',
    '| engine | tokens/s | ÷ native CPU |',
    '|---|---:|---:|',
    `| page, CPU engine (wasm, ${summary.page_cpu_threads_note}) | ${f(pageCpu)} | ${f(summary.page_cpu_over_native, 3)} |`,
    `| page, CPU engine (wasm, one thread) | ${f(pageCpu1)} | ${f(summary.page_cpu_1thread_over_native, 3)} |`,
    `| page, WebGPU engine | ${f(pageGpu, 2)} | ${f(summary.page_gpu_over_native, 4)} |`,
    `| native, edge-llm tune --device cpu | ${f(nativeCpu)} | 1.000 |`,
    '',
    `page CPU ÷ page GPU: ${f(summary.page_cpu_over_page_gpu)}×; threads ÷ one thread: ${f(summary.page_cpu_threads_speedup, 2)}×; losses, page CPU vs native: max |Δ| ${maxLossDiff.toExponential(2)}`,
    `peaks: page ${f(summary.page_cpu_peak_gflops)} GFLOP/s (${summary.page_cpu_peak_isa}, ${summary.page_cpu_threads} threads; ` +
      `one thread ${f(summary.page_cpu_1thread_peak_gflops)}), native ${f(summary.native_cpu_peak_gflops)} (${summary.native_cpu_peak_isa}): ` +
      `page ÷ native ${f(summary.page_peak_over_native_peak, 3)}`,
    results.gpu ? `WebGPU engine: ${results.gpu.reason}` : '',
  ].join('\n'));
}
