// The tuning settings: read and checked from the form, written back for a resumed run, and
// the selected mode's own inputs.

import { $ } from './ui.js';
import { model, modelInfo } from './state.js';

export function readOptions() {
  const num = (id, label, { int = true, min = 0 } = {}) => {
    const raw = $(id).value.trim();
    const v = Number(raw);
    if (raw === '' || !Number.isFinite(v) || (int && !Number.isInteger(v)) || v < min) {
      throw new Error(`${label} must be ${int ? 'a whole number' : 'a number'} of at least ${min}.`);
    }
    return v;
  };
  const options = {
    steps: num('opt-steps', 'Steps', { min: 1 }),
    lr: num('opt-lr', 'Learning rate', { int: false, min: 1e-9 }),
    lora_rank: num('opt-rank', 'LoRA rank', { min: 1 }),
    seq_len: num('opt-seq', 'Sequence length', { min: 2 }),
    eval_every: num('opt-eval', 'Validate every', { min: 0 }),
    accum: num('opt-accum', 'Rows per step', { min: 1 }),
  };
  if ($('opt-budget').value.trim() !== '') {
    options.memory_budget = Math.round(num('opt-budget', 'Memory budget', { int: false, min: 0.001 }) * 1024 * 1024);
  }
  const mode = $('opt-mode').value;
  const blocks = modelInfo ? modelInfo.config.n_layers : Infinity;
  options.mode = mode;
  if (mode === 'compress-then-tune' && model && !model.compressed) {
    throw new Error('Compress-then-tune tunes a compressed model, and this one is not compressed: load a ' +
      '.gguf written by `edge-llm compress`, or pick vanilla.');
  }
  if (mode === 'edge') {
    options.exit_stride = num('opt-exit-stride', 'Exit every', { min: 1 });
    if (options.exit_stride > blocks) {
      throw new Error(`Exit every must be at most the model's ${blocks} blocks (one exit, at the top).`);
    }
    options.window_schedule = $('opt-window-schedule').value;
    options.window_lr_power = num('opt-window-lr-power', 'Window LR depth power', { int: false, min: 0 });
    options.window_steps_power = num('opt-window-steps-power', 'Window steps depth power', { int: false, min: 0 });
  }
  if (mode === 'partial') {
    options.partial_layers = num('opt-partial', 'Blocks to tune', { min: 1 });
    if (options.partial_layers > blocks) {
      throw new Error(`Blocks to tune must be at most the model's ${blocks} blocks.`);
    }
  }
  return options;
}

const WINDOWED = ['partial', 'edge'];

/// Shows the selected mode's own inputs and says where it runs.
export function updateModeControls() {
  const mode = $('opt-mode').value;
  document.body.dataset.mode = mode;
  for (const el of document.querySelectorAll('#mode-box [data-modes]')) {
    el.hidden = !el.dataset.modes.split(' ').includes(mode);
  }
  const compressed = model ? model.compressed : false;
  let note;
  if (WINDOWED.includes(mode)) {
    note = 'Edge and partial modes train one window of blocks at a time on the GPU: the blocks below it run ' +
      'forward only (their output is cached per row) and nothing above it runs.';
    if (mode === 'edge') {
      note += ' Each window of blocks trains in turn with its loss read at its own early exit; the exits are ' +
        'saved as exits.safetensors beside the PEFT files and vote in evaluation.';
      if (model && !compressed) {
        note += ' Edge mode is defined on a LUC-compressed model (edge-llm compress --allocation luc); this ' +
          'one is not compressed and is tuned as it is.';
      }
    }
  } else if (mode === 'compress-then-tune') {
    note = compressed ? 'Every block of this compressed model trains on the GPU.'
      : 'Compress-then-tune needs a compressed model (edge-llm compress); this one is not.';
  } else {
    note = 'Every block trains on the GPU.';
  }
  $('mode-note').textContent = note;
}

export function writeOptions(o, saveEvery) {
  $('opt-steps').value = o.steps;
  $('opt-lr').value = o.lr;
  $('opt-rank').value = o.lora_rank;
  $('opt-seq').value = o.seq_len;
  $('opt-eval').value = o.eval_every;
  $('opt-accum').value = o.accum;
  $('opt-budget').value = o.memory_budget ? o.memory_budget / (1024 * 1024) : '';
  $('opt-save').value = saveEvery;
  $('opt-mode').value = o.mode || 'vanilla';
  if (o.exit_stride) $('opt-exit-stride').value = o.exit_stride;
  if (o.window_schedule) $('opt-window-schedule').value = o.window_schedule;
  if (o.window_lr_power != null) $('opt-window-lr-power').value = o.window_lr_power;
  if (o.window_steps_power != null) $('opt-window-steps-power').value = o.window_steps_power;
  if (o.partial_layers) $('opt-partial').value = o.partial_layers;
  updateModeControls();
}
