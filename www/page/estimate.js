// How long the chosen settings take, said before Start: the speed of these settings measured
// on this device by a short probe in the worker (a trainer of its own for two steps of one
// short row, freed after), times the tokens the run will train on; and smaller settings
// offered when that is more than a quarter of an hour.

import { $ } from './ui.js';
import { modelInfo, gpuDescription, tune, call, BUSY } from './state.js';

/// From this long on, smaller settings are offered (a first try should take minutes).
const LONG_S = 15 * 60;
/// The offered settings aim at about this long.
const SUGGEST_S = 300;
/// The probe's rows are at most this many tokens: about 3 s a step for SmolLM2-135M on a
/// 2-core CPU. (Shorter rows ran slower per token: 29 tokens/s at 64 against 39 for the run's
/// 245-token rows.)
const PROBE_SEQ = 128;
/// A validation row costs about a third of a training row (forward only).
const VAL_COST = 1 / 3;
/// The probe waits for the settings to rest this long (no probe per keystroke, none when
/// Start follows at once).
const PROBE_DELAY_MS = 1000;

/// A duration in words: "under a minute", "about 4 min", "about 2.5 hours".
export function duration(s) {
  if (s < 60) return 'under a minute';
  if (s < 3600) return `about ${Math.round(s / 60)} min`;
  return `about ${(s / 3600).toFixed(1)} hours`;
}

export function clearEstimate() {
  const el = $('estimate');
  el.hidden = true;
  el.replaceChildren();
  el.classList.remove('long');
  delete el.dataset.seconds;
}

/// Seconds for `options` on this data at the measured speed.
function secondsFor(options, stats, tokensPerS) {
  const rowTokens = stats.train_rows ? stats.train_tokens / stats.train_rows : PROBE_SEQ;
  const train = options.steps * options.accum * rowTokens;
  const checks = options.eval_every > 0 ? Math.floor(options.steps / options.eval_every) + 1 : 1;
  const val = checks * stats.val_rows * rowTokens * VAL_COST;
  return { seconds: (train + val) / tokensPerS, rowTokens };
}

/// Measures (once per model, engine, mode and row shape) and says how long the run takes.
/// `stale()` says whether the settings changed meanwhile.
export async function showEstimate(data, options, info, plan, stale) {
  const el = $('estimate');
  const probeOptions = { ...options, seq_len: Math.min(options.seq_len, PROBE_SEQ) };
  const key = JSON.stringify([modelInfo.name, modelInfo.bytes, plan.device, options.mode, probeOptions.seq_len,
    options.lora_rank, options.exit_stride, options.partial_layers, data.name, data.text.length, data.kind]);
  if (plan.device === 'gpu' && gpuDescription?.device_type === 'Cpu') {
    // WebGPU on a software adapter (SwiftShader): the probe alone would hold the engine for
    // minutes, and the run is hundreds of times slower than on the CPU engine.
    clearEstimate();
    el.textContent = 'No estimate: WebGPU here is a software renderer, on which even a two-step probe takes ' +
      'minutes; the CPU engine (Engine: auto, under Advanced settings) is far faster on this device.';
    el.hidden = false;
    return;
  }
  if (!tune.probe || tune.probe.key !== key) {
    clearEstimate();
    el.textContent = 'Measuring the speed of these settings on this device…';
    el.hidden = false;
    await new Promise((r) => setTimeout(r, PROBE_DELAY_MS));
    if (tune.probing) await tune.probing;
    if (stale() || BUSY.includes(tune.state)) { if (!stale()) clearEstimate(); return; }
    const probe = call('probe', { name: data.name, text: data.text, kind: data.kind, options: probeOptions });
    tune.probing = probe.catch(() => null);
    let r = null;
    try { r = await probe; } catch { /* no estimate: the run itself shows its speed */ } finally { tune.probing = null; }
    if (stale()) return;
    if (!r || !(r.tokens_per_s > 0)) { clearEstimate(); return; }
    tune.probe = { key, ...r };
  }
  const tps = tune.probe.tokens_per_s;
  const { seconds, rowTokens } = secondsFor(options, info.stats, tps);
  const rate = tps < 10 ? tps.toFixed(2) : Math.round(tps);
  clearEstimate();
  el.dataset.seconds = String(Math.round(seconds));
  el.dataset.tokensPerS = String(tps);
  el.append(`${options.steps} steps take ${duration(seconds)} on this device ` +
    `(measured here: ${rate} tokens/s with these settings).`);
  if (seconds >= LONG_S) {
    // One row per step, the validation loss measured once (at the end), as many steps as
    // fit in about SUGGEST_S.
    let steps = Math.max(1, Math.min(options.steps, Math.floor((SUGGEST_S * tps) / rowTokens)));
    const time = (n) => secondsFor({ ...options, steps: n, accum: 1, eval_every: 0 }, info.stats, tps).seconds;
    while (steps > 1 && time(steps) > SUGGEST_S) steps = Math.floor(steps * 0.9);
    const shorter = time(steps);
    el.classList.add('long');
    el.append(` That is long for a first try: ${steps} steps of one row each, with the validation loss ` +
      `measured once at the end, take ${duration(shorter)}. `);
    const use = document.createElement('button');
    use.type = 'button';
    use.id = 'use-suggested';
    use.className = 'secondary';
    use.textContent = `Use ${steps} steps of one row`;
    use.addEventListener('click', () => {
      $('opt-steps').value = String(steps);
      $('opt-accum').value = '1';
      $('opt-eval').value = '0';
      $('opt-steps').dispatchEvent(new Event('change'));
    });
    el.append(use);
  }
  el.hidden = false;
}
