// The tune section's data and settings: the data (a built-in set served beside the page, or
// the user's file), the options read from the form and written back for a resumed run, and
// the check of both as they change: what preparation makes of the data and the GPU memory
// plan (nothing is allocated). Compression and evaluation read the same data.

import { $, showError, messageOf, plain, mib, kib, fillTable } from './ui.js';
import { model, modelInfo, tune, call, BUSY } from './state.js';
import { setTuneState } from './controls.js';
import { showEstimate, clearEstimate } from './estimate.js';
import { showPlanBar, hidePlanBar } from './planbar.js';

const BUILTIN = {
  'builtin:arc': { url: 'data/arc-easy/train.jsonl', name: 'arc-easy/train.jsonl', kind: 'mc' },
  // The whole 4.7 MB takes long to tokenize in a tab; a slice is plenty for a demo run.
  'builtin:shakespeare': { url: 'data/shakespeare/train.txt', name: 'shakespeare/train.txt', kind: 'text', limit: 256 * 1024 },
};

export function dataSource() {
  return document.querySelector('input[name=data-source]:checked').value;
}

/// The current data as {source, name, kind, text}; fetches built-in data once.
export async function currentData() {
  const source = dataSource();
  if (source === 'file') {
    if (!tune.file) throw new Error('Choose a data file (.txt, .jsonl) above, or pick a built-in data set.');
    return { source, name: tune.file.name, kind: $('data-kind').value, text: tune.file.text };
  }
  return builtinData(source);
}

/// A built-in data set (fetched once).
export async function builtinData(source) {
  const b = BUILTIN[source];
  if (!(source in tune.builtinText)) {
    const r = await fetch(b.url);
    if (!r.ok) {
      throw new Error(`Could not fetch ${b.url} (HTTP ${r.status}). Start the page with scripts/run.sh, ` +
        'which places the built-in data there, or use your own file.');
    }
    let text = await r.text();
    if (b.limit && text.length > b.limit) {
      const cut = text.lastIndexOf('\n', b.limit);
      text = text.slice(0, cut > 0 ? cut + 1 : b.limit);
    }
    tune.builtinText[source] = text;
  }
  return { source, name: b.name, kind: b.kind, text: tune.builtinText[source] };
}

/// An error about one setting: `field` is the id of its input.
function fieldError(field, message) {
  const e = new Error(message);
  e.field = field;
  return e;
}

/// The input a settings message of the engine is about (its words name the setting as the
/// form does), or null.
const FIELD_WORDS = [
  [/LoRA rank/i, 'opt-rank'], [/sequence length|rows of \d+ tokens/i, 'opt-seq'], [/learning rate/i, 'opt-lr'],
  [/exit every/i, 'opt-exit-stride'], [/blocks to tune/i, 'opt-partial'],
  [/learning-rate depth power/i, 'opt-window-lr-power'], [/steps depth power/i, 'opt-window-steps-power'],
  [/rows per step|accumulation/i, 'opt-accum'], [/budget/i, 'opt-budget'], [/^(the )?steps/i, 'opt-steps'],
];
export function fieldOf(message) {
  return FIELD_WORDS.find(([re]) => re.test(message))?.[1] ?? null;
}

/// Outlines the setting `id` with `message` under it (and opens the section it is in);
/// `null` clears every mark.
export function markField(id, message = '') {
  for (const el of document.querySelectorAll('#settings-box .invalid')) {
    el.classList.remove('invalid');
    el.removeAttribute('aria-invalid');
  }
  for (const el of document.querySelectorAll('#settings-box .field-error')) el.remove();
  if (!id) return;
  const input = $(id);
  input.classList.add('invalid');
  input.setAttribute('aria-invalid', 'true');
  const note = document.createElement('span');
  note.className = 'field-error';
  note.textContent = message;
  input.after(note);
  for (let d = input.closest('details'); d; d = d.parentElement.closest('details')) d.open = true;
}

export function readOptions() {
  const num = (id, label, { int = true, min = 0 } = {}) => {
    const raw = $(id).value.trim();
    const v = Number(raw);
    if (raw === '' || !Number.isFinite(v) || (int && !Number.isInteger(v)) || v < min) {
      throw fieldError(id, `${label} must be ${int ? 'a whole number' : 'a number'} of at least ${min}.`);
    }
    return v;
  };
  const options = {
    steps: num('opt-steps', 'Steps', { min: 1 }),
    lr: num('opt-lr', 'Learning rate', { int: false, min: 1e-9 }),
    lora_rank: num('opt-rank', 'LoRA rank', { min: 1 }),
    seq_len: num('opt-seq', 'Tokens per row', { min: 2 }),
    eval_every: num('opt-eval', 'Validate every', { min: 0 }),
    accum: num('opt-accum', 'Rows of text per step', { min: 1 }),
  };
  if ($('opt-budget').value.trim() !== '') {
    options.memory_budget = Math.round(num('opt-budget', 'Memory budget', { int: false, min: 0.001 }) * 1024 * 1024);
  }
  const mode = $('opt-mode').value;
  const blocks = modelInfo ? modelInfo.config.n_layers : Infinity;
  options.mode = mode;
  options.device = $('opt-device').value;
  if (mode === 'compress-then-tune' && model && !model.compressed) {
    throw fieldError('opt-mode', 'Compress-then-tune tunes a compressed model, and this one is not compressed: ' +
      'compress it under Advanced below (or load a compressed .gguf), or pick vanilla.');
  }
  if (mode === 'edge') {
    options.exit_stride = num('opt-exit-stride', 'Exit every', { min: 1 });
    if (options.exit_stride > blocks) {
      throw fieldError('opt-exit-stride', `Exit every must be at most the model's ${blocks} blocks (one exit, at the top).`);
    }
    options.window_schedule = $('opt-window-schedule').value;
    options.window_lr_power = num('opt-window-lr-power', 'Window LR depth power', { int: false, min: 0 });
    options.window_steps_power = num('opt-window-steps-power', 'Window steps depth power', { int: false, min: 0 });
  }
  if (mode === 'partial') {
    options.partial_layers = num('opt-partial', 'Blocks to tune', { min: 1 });
    if (options.partial_layers > blocks) {
      throw fieldError('opt-partial', `Blocks to tune must be at most the model's ${blocks} blocks.`);
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
    note = 'Edge and partial modes train one window of blocks at a time: the blocks below it run ' +
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
    note = compressed ? 'Every block of this compressed model trains.'
      : 'Compress-then-tune needs a compressed model (edge-llm compress); this one is not.';
  } else {
    note = 'Every block trains.';
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
  $('opt-device').value = o.device || 'auto';
  if (o.exit_stride) $('opt-exit-stride').value = o.exit_stride;
  if (o.window_schedule) $('opt-window-schedule').value = o.window_schedule;
  if (o.window_lr_power != null) $('opt-window-lr-power').value = o.window_lr_power;
  if (o.window_steps_power != null) $('opt-window-steps-power').value = o.window_steps_power;
  if (o.partial_layers) $('opt-partial').value = o.partial_layers;
  updateModeControls();
}

function showPreview(text) {
  const lines = text.split('\n').slice(0, 12).map((l) => (l.length > 300 ? `${l.slice(0, 300)}…` : l));
  $('data-preview').textContent = lines.join('\n');
  $('data-preview-box').hidden = false;
}

function showProblems(problems) {
  const box = $('data-problems-box');
  if (!problems.length) { box.hidden = true; return; }
  $('data-problems-title').textContent =
    `${problems.length} line${problems.length === 1 ? '' : 's'} cannot be used and will be skipped ` +
    '(fix them in the file and pick it again to use them):';
  const shown = problems.slice(0, 50).map((p) => {
    const li = document.createElement('li');
    li.textContent = `line ${p.line}: ${p.message}`;
    return li;
  });
  if (problems.length > 50) {
    const li = document.createElement('li');
    li.textContent = `… and ${problems.length - 50} more`;
    shown.push(li);
  }
  $('data-problems').replaceChildren(...shown);
  box.hidden = false;
}

const KIND_WORDS = {
  instruct: ['example', 'examples', 'a prompt and its response each'],
  'multiple-choice': ['question', 'questions', 'with choices'],
};

/// What preparation made of the data, in plain words: examples to train on and held out,
/// what was cut or skipped and why, and the unusable lines.
export function showDataInfo(info, data) {
  tune.dataInfo = info;
  const s = info.stats;
  const n = (k, one, many) => `${k} ${k === 1 ? one : many}`;
  let what;
  if (info.kind === 'text') {
    what = `${kib(data.text.length)} of plain text, in ${n(s.examples, 'piece', 'pieces')} of up to ` +
      `${$('opt-seq').value} tokens`;
  } else {
    const [one, many, how] = KIND_WORDS[info.kind] ?? ['record', 'records', ''];
    what = `${n(info.records, one, many)}${how ? ` (${how})` : ''}`;
  }
  const held = s.val_examples
    ? `${s.val_examples} held out to check progress (the validation loss)`
    : 'none held out to check progress: there are too few to spare one, so no validation loss is shown';
  $('data-status').textContent = `${data.name}: ${what} → ${s.train_examples} to train on, ${held}.`;
  $('data-status').dataset.trainRows = String(s.train_rows);
  $('data-status').dataset.valExamples = String(s.val_examples);
  const notes = [];
  // A skipped example was cut first: the cut ones kept are the others.
  const cut = Math.max(0, s.truncated - s.dropped);
  if (s.dropped) {
    notes.push(`${n(s.dropped, 'example is', 'examples are')} skipped: the prompt alone fills the ` +
      `${$('opt-seq').value} tokens per row, leaving no answer to learn (raise "Tokens per row" to keep them).`);
  }
  if (cut) {
    notes.push(`${n(cut, 'example was', 'examples were')} cut to the ${$('opt-seq').value} tokens per row ` +
      '(raise "Tokens per row" to keep them whole).');
  }
  $('data-note').textContent = notes.join(' ');
  $('data-note').hidden = !notes.length;
  showPreview(data.text);
  showProblems(info.problems);
  showError('data-error', '');
}

export function windowLabel(index, plan = tune.plan) {
  const w = plan?.windows?.[index];
  if (!w) return `window ${index + 1}`;
  const [a, b] = w.layers;
  const blocks = b - a === 1 ? `block ${b}` : `blocks ${a + 1}–${b}`;
  const lr = w.lr_scale != null && w.lr_scale !== 1 ? `, LR × ${w.lr_scale.toPrecision(2)}` : '';
  return `window ${index + 1} (${blocks}, ${w.exit_after === null ? 'model head' : `exit after ${w.exit_after}`}${lr})`;
}

export function showPlan(plan) {
  const windowed = plan.windows.length > 1 || plan.windows[0]?.layers[0] > 0;
  const rows = plan.device === 'cpu' ? [
    ['total', 'Memory planned (this tab)', kib(plan.total_bytes)],
    ...plan.by_category.map((c) => [`cat-${c.category}`, `· ${c.category}`, kib(c.bytes)]),
    ['device', 'Runs on', plan.device_reason],
  ] : [
    ['total', 'GPU memory planned', kib(plan.total_bytes)],
    ...plan.by_category.map((c) => [`cat-${c.category}`, `· ${c.category.replace('_', ' ')}`, kib(c.bytes)]),
    ['budget', 'Budget', plan.budget_bytes ? mib(plan.budget_bytes) : 'none (device limits only)'],
    ['changes', 'To fit', plan.changes.length ? plan.changes.join(', ') : 'nothing changed'],
    ['largest', 'Largest buffer', `${plan.largest[0]?.name} (${kib(plan.largest[0]?.bytes ?? 0)}; binding limit ${mib(plan.max_storage_buffer_binding_size)})`],
    ['device', 'Runs on', plan.device_reason],
  ];
  if (windowed) {
    rows.push(['windows', 'Windows (trained in turn)',
      `${plan.windows.map((w) => windowLabel(w.index, plan)).join('; ')}; ${plan.window_schedule ?? 'reference'} order`]);
    if (plan.exits.length) rows.push(['exits', 'Early exits after blocks', plan.exits.join(', ')]);
  }
  fillTable($('plan-table'), rows);
  showPlanBar(plan);
  $('plan-table').dataset.totalBytes = String(plan.total_bytes);
  $('plan-table').dataset.device = plan.device;
}

let cpuThreads = { threads: 1, note: 'one thread' };
/// What the tuning worker's CPU engine got: `{ threads, note }` (cpuThreads in edge-llm.js).
export function setCpuThreads(t) {
  if (t) cpuThreads = t;
}

/// One line on where the run would train and what it needs.
export function planStatus(plan) {
  if (plan.device === 'cpu') {
    return `Runs on the CPU engine in this tab (${cpuThreads.note}) and needs about ${kib(plan.total_bytes)} of memory.`;
  }
  return plan.budget_bytes
    ? `Runs on the GPU; fits the budget of ${kib(plan.budget_bytes)}: ${kib(plan.total_bytes)} of GPU memory.`
    : `Runs on the GPU and needs ${kib(plan.total_bytes)} of GPU memory.`;
}

let checkTimer = 0;
export function scheduleCheck() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkSettings, 250);
}

/// The plan and the estimate no longer hold: `status` says why.
function clearPlan(status) {
  $('plan-table').hidden = true;
  hidePlanBar();
  $('plan-status').textContent = status;
  clearEstimate();
}

/// Shows a settings error beside the settings, its field outlined, and no plan.
function showSettingsError(message, field, hint = '') {
  clearPlan('These settings cannot run.');
  markField(field, message);
  showError('plan-error', `${message}${hint ? `\n${hint}` : ''}`);
}

/// Checks the data and plans memory for the current settings (nothing is allocated), then
/// estimates how long the run takes.
export async function checkSettings() {
  if (!model || !tune.worker || BUSY.includes(tune.state)) return;
  const seq = ++tune.checkSeq;
  const stale = () => seq !== tune.checkSeq;
  tune.ready = false;
  setTuneState(tune.state);
  showError('data-error', '');
  showError('plan-error', '');
  markField(null);
  let data, options;
  try {
    options = readOptions();
  } catch (e) {
    showSettingsError(messageOf(e), e.field ?? null);
    return;
  }
  $('data-status').textContent = 'Checking the data…';
  let info;
  try {
    data = await currentData();
    if (stale()) return;
    showPreview(data.text);
    info = await call('checkData', { name: data.name, text: data.text, kind: data.kind, options });
    if (stale()) return;
    showDataInfo(info, data);
  } catch (e) {
    if (stale()) return;
    const msg = messageOf(e);
    // A setting the engine refuses is the settings' error, not the data's.
    if (/^invalid argument: /.test(msg)) {
      $('data-status').textContent = 'The data is checked once the settings can run.';
      showSettingsError(plain(msg), fieldOf(plain(msg)));
      return;
    }
    $('data-status').textContent = 'The data cannot be used.';
    $('data-problems-box').hidden = true;
    $('data-note').hidden = true;
    clearPlan('The plan appears once the data can be used.');
    showError('data-error', `${plain(msg)}\nPick a plain-text file, or JSONL with one ` +
      '{"prompt", "response"} or {"question", "choices", "answer"} object per line (see data/README.md).');
    return;
  }
  $('plan-status').textContent = 'Planning memory…';
  let plan;
  try {
    plan = await call('plan', { options });
    if (stale()) return;
    showPlan(plan);
    $('plan-status').textContent = planStatus(plan);
    tune.ready = true;
  } catch (e) {
    if (stale()) return;
    const msg = plain(messageOf(e));
    const memory = /budget|too small|binding|fit|memory/.test(msg);
    const noGpu = /no GPU adapter/.test(msg);
    if (noGpu) {
      clearPlan('There is no GPU here: choose the CPU or auto engine.');
      markField('opt-device', 'No GPU here.');
      showError('plan-error', msg);
    } else if (memory) {
      // The CPU engine's message says what to change; the GPU's budget is a setting.
      showSettingsError(msg, fieldOf(msg) ?? 'opt-budget', /on the CPU/.test(msg) ? ''
        : 'Raise the memory budget (or leave it empty), or lower the tokens per row or the LoRA rank.');
      $('plan-status').textContent = 'This run does not fit.';
    } else {
      showSettingsError(msg, fieldOf(msg), 'Change the mode or its settings above.');
    }
  }
  setTuneState(tune.state);
  if (plan && tune.ready) showEstimate(data, options, info, plan, stale);
}
