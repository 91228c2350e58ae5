// The page: WebGPU adapter info, the model (default or picked from disk) and its
// configuration, the prompt tokenized live, LoRA tuning, and evaluation and chat with the
// tuned model. All work happens in ./pkg/edge_llm.js (the Rust crate compiled to
// WebAssembly by scripts/build-wasm.sh), reached through ./edge-llm.js, the npm package's
// wrapper (npm/index.js). Tuning, evaluation and chat run in ./worker.js, which has its own
// copy of the module and its own GPU device, so the page stays responsive. Checkpoints go
// to IndexedDB, so a run survives a reload.

const $ = (id) => document.getElementById(id);

// `?model=models/tiny.gguf` serves another model beside the page (tests use the tiny one).
const DEFAULT_MODEL = new URLSearchParams(location.search).get('model') || 'models/default.gguf';

let wasm = null;   // the edge-llm wrapper module (./edge-llm.js), once initialised
let model = null;  // the loaded WebModel
let modelInfo = null;  // {name, bytes, config, compressed, policy} of the loaded model
let gpuDescription = null;  // gpuInfo() of the page's adapter, for the run report

// ---------------------------------------------------------------- helpers

function showError(id, message) {
  const box = $(id);
  box.textContent = message;
  box.hidden = !message;
}

/// The message of anything thrown (JsError, RuntimeError from a Rust panic, fetch errors).
function messageOf(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    return `internal error in the WebAssembly module (${e.message}); details are in the browser console`;
  }
  return (e && e.message) || String(e);
}

function mib(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

function fillTable(table, rows) {
  const body = table.querySelector('tbody');
  body.replaceChildren();
  for (const [key, label, value] of rows) {
    const tr = document.createElement('tr');
    tr.dataset.key = key;
    const th = document.createElement('th');
    th.textContent = label;
    const td = document.createElement('td');
    td.textContent = String(value);
    tr.append(th, td);
    body.append(tr);
  }
  table.hidden = false;
}

const nextFrame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));

// ---------------------------------------------------------------- WebGPU

async function showGpu() {
  const status = $('gpu-status');
  if (!('gpu' in navigator)) {
    status.textContent = 'No WebGPU.';
    showError('gpu-error',
      'This browser does not offer WebGPU (navigator.gpu is missing). Use a current Chrome or Edge ' +
      '(113 or later), Safari 26, or Firefox 141 or later on Windows. On Linux, start Chrome with ' +
      '--enable-unsafe-webgpu. WebGPU also needs a secure page: open it from http://localhost or https.');
    return;
  }
  try {
    const info = await wasm.gpuInfo();
    gpuDescription = info;
    // wgpu reports only the adapter description; the browser's GPUAdapterInfo adds more.
    let vendor = '', architecture = '';
    try {
      const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
      vendor = adapter?.info?.vendor ?? '';
      architecture = adapter?.info?.architecture ?? '';
    } catch { /* informational only */ }
    const name = info.adapter || [vendor, architecture].filter(Boolean).join(' ') || '(unnamed)';
    const dev = info.device_limits, ad = info.adapter_limits;
    const both = (key, fmt = (v) => v) =>
      dev[key] === ad[key] ? fmt(dev[key]) : `${fmt(dev[key])} (adapter allows ${fmt(ad[key])})`;
    const table = $('gpu-table');
    table.dataset.backend = info.backend;
    fillTable(table, [
      ['adapter', 'Adapter', name],
      ['backend', 'Backend', info.backend],
      ['vendor', 'Vendor', vendor || '—'],
      ['architecture', 'Architecture', architecture || '—'],
      ['device_type', 'Device type', info.device_type],
      ['max_storage_buffer_binding_size', 'Max storage buffer binding', both('max_storage_buffer_binding_size', mib)],
      ['max_buffer_size', 'Max buffer size', both('max_buffer_size', mib)],
      ['max_compute_workgroups_per_dimension', 'Max workgroups per dimension', both('max_compute_workgroups_per_dimension')],
      ['max_compute_invocations_per_workgroup', 'Max invocations per workgroup', both('max_compute_invocations_per_workgroup')],
      ['max_compute_workgroup_storage_size', 'Workgroup memory', both('max_compute_workgroup_storage_size', (v) => `${v / 1024} KiB`)],
    ]);
    const offered = info.adapter_features.length ? info.adapter_features.join(', ') : 'none';
    const used = info.features.length ? info.features.join(', ') : 'none (the kernels need only core WebGPU)';
    $('gpu-features').textContent = `Adapter offers: ${offered}\nEnabled: ${used}`;
    $('gpu-features-box').hidden = false;
    status.textContent = `WebGPU adapter ready: ${name}.`;
    status.classList.add('ok');
  } catch (e) {
    status.textContent = 'No WebGPU adapter.';
    showError('gpu-error',
      `${messageOf(e)}\nThe browser has WebGPU but gave no adapter: check that hardware acceleration ` +
      'is on (chrome://settings/system) and see chrome://gpu for why WebGPU is disabled.');
  }
}

// ---------------------------------------------------------------- model

const CONFIG_LABELS = {
  architecture: 'Architecture',
  n_layers: 'Layers',
  hidden: 'Hidden size',
  ffn: 'FFN size',
  n_heads: 'Attention heads',
  n_kv_heads: 'KV heads',
  head_dim: 'Head dimension',
  rope_theta: 'RoPE θ',
  rope_style: 'RoPE style',
  norm_eps: 'RMSNorm ε',
  vocab: 'Vocabulary',
  context_length: 'Context length',
  tied_embeddings: 'Tied embeddings',
};

async function fetchWithProgress(url) {
  const status = $('model-status'), bar = $('model-progress');
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`HTTP ${response.status}`);
  }
  const total = Number(response.headers.get('Content-Length')) || 0;
  bar.hidden = false;
  if (total) bar.max = total; else bar.removeAttribute('value');
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    if (total) bar.value = received;
    status.textContent = `Downloading ${url}: ${mib(received)}${total ? ` of ${mib(total)}` : ''}`;
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.length; }
  bar.value = bar.max;
  return bytes;
}

/// Loads `bytes` as the page's model. `origin` ({name, load}) says where the uncompressed
/// original comes from (compression reads it again); 'derived' keeps the current one (the
/// model was compressed from it here).
async function loadBytes(bytes, name, origin = null) {
  const status = $('model-status');
  status.classList.remove('ok');
  status.textContent = `Reading ${name} (${mib(bytes.length)})…`;
  showError('model-error', '');
  await nextFrame();
  try {
    if (model) { model.free(); model = null; }
    model = await wasm.loadModel(bytes);
  } catch (e) {
    status.textContent = 'No model loaded.';
    $('config-table').hidden = true;
    $('prompt').disabled = true;
    $('tokens').replaceChildren();
    $('token-count').textContent = 'Tokens appear here once a model is loaded.';
    $('token-ids').textContent = '';
    showError('model-error',
      `Could not load ${name}: ${messageOf(e)}\nPick the GGUF file of a LLaMA-family model ` +
      '(for example SmolLM2-135M-Instruct, Q4_1, Q8_0, F16 or F32).');
    return;
  }
  const config = model.config;
  const rows = Object.entries(config).map(([k, v]) => [k, CONFIG_LABELS[k] ?? k, v]);
  rows.push(['file_size', 'File size', mib(model.fileBytes)]);
  if (model.compressed) {
    let policy = null;
    try { policy = model.policy; } catch { /* shown when the file is used */ }
    rows.push(['compressed', 'Compressed', policy
      ? `yes: ${policy.allocation} policy, ${policy.prune} ${policy.pattern} pruning, ${policy.quant}`
      : 'yes']);
  }
  fillTable($('config-table'), rows);
  status.textContent = `Loaded ${name}.`;
  status.classList.add('ok');
  $('prompt').disabled = false;
  tokenize();
  let policy = null;
  try { policy = model.policy; } catch { /* a damaged policy shows when the file is used */ }
  modelInfo = { name, bytes: bytes.length, config, compressed: model.compressed, policy };
  $('config-table').dataset.compressed = String(model.compressed);
  $('config-table').dataset.name = name;
  compressModelLoaded(origin);
  await tuneModelLoaded(bytes);
}

async function loadDefault() {
  let bytes;
  try {
    bytes = await fetchWithProgress(DEFAULT_MODEL);
  } catch (e) {
    $('model-progress').hidden = true;
    $('model-status').textContent = 'No default model.';
    showError('model-error',
      `Could not fetch ${DEFAULT_MODEL} (${messageOf(e)}). Start the page with scripts/run.sh, ` +
      'which places the model there, or choose a .gguf file below.');
    return;
  }
  await loadBytes(bytes, DEFAULT_MODEL, { name: DEFAULT_MODEL, load: () => fetchBytes(DEFAULT_MODEL) });
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`could not fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function loadPicked(event) {
  const file = event.target.files[0];
  if (!file) return;
  if (['starting', 'running', 'pausing', 'paused'].includes(tune.state)) {
    showError('model-error', 'A tuning run is in progress: cancel it before loading another model.');
    return;
  }
  $('model-progress').hidden = true;
  if (cmp.job) {
    showError('model-error', 'A compression is running: cancel it before loading another model.');
    return;
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  await loadBytes(bytes, file.name, { name: file.name, load: async () => new Uint8Array(await file.arrayBuffer()) });
}

// ---------------------------------------------------------------- tokenizer

/// A token's text with invisible characters made visible.
function visible(s) {
  return s.replaceAll(' ', '·').replaceAll('\n', '↵').replaceAll('\t', '⇥') || '∅';
}

function tokenize() {
  if (!model) return;
  const user = $('prompt').value;
  const tokens = $('tokens');
  try {
    const text = $('chatml').checked ? model.chatPrompt(user) : user;
    const ids = model.tokenize(text);
    const strings = model.tokenStrings(ids);
    tokens.replaceChildren(...ids.map((id, i) => {
      const chip = document.createElement('span');
      chip.className = 'token';
      if (/^<\|.*\|>$/.test(strings[i])) chip.classList.add('special');
      chip.title = `id ${id}: ${JSON.stringify(strings[i])}`;
      const t = document.createElement('span');
      t.className = 'text';
      t.textContent = visible(strings[i]);
      const n = document.createElement('span');
      n.className = 'id';
      n.textContent = id;
      chip.append(t, n);
      return chip;
    }));
    $('token-count').textContent = `${ids.length} token${ids.length === 1 ? '' : 's'}`;
    $('token-ids').textContent = `[${ids.join(', ')}]`;
    showError('tokenizer-error', '');
  } catch (e) {
    tokens.replaceChildren();
    $('token-count').textContent = 'Tokenization failed.';
    showError('tokenizer-error', messageOf(e));
  }
}

// ---------------------------------------------------------------- tuning

// Built-in data served beside the page (scripts/run.sh links data/ into www/data/).
const BUILTIN = {
  'builtin:arc': { url: 'data/arc-easy/train.jsonl', name: 'arc-easy/train.jsonl', kind: 'mc' },
  // The whole 4.7 MB takes long to tokenize in a tab; a slice is plenty for a demo run.
  'builtin:shakespeare': { url: 'data/shakespeare/train.txt', name: 'shakespeare/train.txt', kind: 'text', limit: 256 * 1024 },
};
const RUN_KEY = 'current';

const tune = {
  worker: null,
  state: 'idle',       // idle | starting | running | pausing | paused | done | cancelled | error
  ready: false,        // data and plan checked for the current settings
  created: false,      // the worker holds a tuner
  run: null,           // {model, data, options, save_every}: what defines the run
  step: 0,
  total: 0,
  plan: null,
  device: 'gpu',       // where the run trains (every mode: the GPU)
  history: { train: [], val: [] },
  elapsedMs: 0,        // training time of earlier sessions of this run
  sessionStart: 0,
  sessionSteps: 0,
  sessionMs: 0,
  lastTokensPerS: 0,
  file: null,          // {name, text} of the user's data file
  builtinText: {},
  checkSeq: 0,
  speeds: [],          // [step, tokens/s, ms] of this session's steps (the run report's timings)
  dataInfo: null,      // what preparation made of the data (the run report's `data.stats`)
};

// For the browser console and the page test: the run's state, loss history included.
window.edgeLlmTune = tune;
/// For the end-to-end tests: lose the tuning worker's GPU device as a driver reset would.
window.edgeLlmDebug = { loseGpu: () => call('debugLoseGpu') };

let nextCall = 1;
const pending = new Map();

function call(op, args = {}, transfer = []) {
  return new Promise((resolve, reject) => {
    const id = nextCall++;
    pending.set(id, { resolve, reject });
    tune.worker.postMessage({ id, op, args }, transfer);
  });
}

function setTuneState(state) {
  tune.state = state;
  document.body.dataset.tuneState = state;
  const busy = ['starting', 'running', 'pausing', 'paused'].includes(state);
  $('data-box').disabled = busy;
  $('settings-box').disabled = busy;
  // A compression ends by loading its model into the worker: no run starts meanwhile.
  $('tune-start').disabled = busy || !tune.ready || !model || cmp.state === 'running';
  $('tune-pause').disabled = state !== 'running';
  $('tune-resume').disabled = state !== 'paused';
  $('tune-cancel').disabled = !(state === 'running' || state === 'paused');
  $('tune-download').disabled = !(tune.created && (state === 'paused' || state === 'done'));
  $('resume-saved').disabled = busy || !model;
  updateEvalControls();
  updateCompressControls();
}

function showTuneError(message) {
  showError('tune-error', message);
}

// ------------------------------------------------ IndexedDB: the saved run

function idbOpen() {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open('edge-llm', 1);
    r.onupgradeneeded = () => r.result.createObjectStore('runs');
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

async function idb(mode, fn) {
  const db = await idbOpen();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction('runs', mode);
      const req = fn(tx.objectStore('runs'));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
    });
  } finally {
    db.close();
  }
}

const idbGet = (key) => idb('readonly', (s) => s.get(key));
const idbPut = (key, value) => idb('readwrite', (s) => s.put(value, key));
const idbDelete = (key) => idb('readwrite', (s) => s.delete(key));

async function saveRun(checkpoint, step, done) {
  const record = {
    version: 1,
    savedAt: Date.now(),
    ...tune.run,
    step,
    total: tune.total,
    done,
    elapsedMs: elapsedMs(),
    history: tune.history,
    checkpoint,
  };
  try {
    await idbPut(RUN_KEY, record);
    document.body.dataset.savedStep = String(step);
    $('tune-status').dataset.saved = `${step}`;
    return true;
  } catch (e) {
    showTuneError(`Could not save the checkpoint in this browser's storage (${messageOf(e)}). ` +
      'The run goes on, but a reload would lose it: free some disk space or allow site storage.');
    return false;
  }
}

async function showSavedRun() {
  let rec = null;
  try { rec = await idbGet(RUN_KEY); } catch { /* no storage: nothing to offer */ }
  const box = $('saved-run');
  if (!rec || tune.created) { box.hidden = true; return; }
  const when = new Date(rec.savedAt).toLocaleString();
  const what = rec.done ? 'A finished run' : 'A saved run';
  $('saved-run-text').textContent =
    `${what} is stored in this browser: step ${rec.step} of ${rec.total} on ${rec.data.name}, ` +
    `model ${rec.model.name}, saved ${when}.`;
  box.hidden = false;
}

// ------------------------------------------------ data and settings

function kib(bytes) { return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : mib(bytes); }

function dataSource() {
  return document.querySelector('input[name=data-source]:checked').value;
}

/// The current data as {source, name, kind, text}; fetches built-in data once.
async function currentData() {
  const source = dataSource();
  if (source === 'file') {
    if (!tune.file) throw new Error('Choose a data file (.txt, .jsonl) above, or pick a built-in data set.');
    return { source, name: tune.file.name, kind: $('data-kind').value, text: tune.file.text };
  }
  return builtinData(source);
}

/// A built-in data set (fetched once).
async function builtinData(source) {
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

function readOptions() {
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
function updateModeControls() {
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

function writeOptions(o, saveEvery) {
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

/// What preparation made of the data: records, rows, truncation, and the unusable lines.
function showDataInfo(info, data) {
  tune.dataInfo = info;
  const s = info.stats;
  $('data-status').textContent = `${data.name}: ` +
    (info.kind === 'text'
      ? `${kib(data.text.length)} of plain text → `
      : `${info.records} ${info.kind} record${info.records === 1 ? '' : 's'} (${kib(data.text.length)}) → `) +
    `${s.train_rows} training rows (${s.train_targets} target tokens), ${s.val_rows} validation rows` +
    `${s.truncated ? `; ${s.truncated} cut to the sequence length` : ''}` +
    `${s.dropped ? `; ${s.dropped} dropped (no target left)` : ''}.`;
  $('data-status').dataset.trainRows = String(s.train_rows);
  showPreview(data.text);
  showProblems(info.problems);
  showError('data-error', '');
}

/// `window` of a plan as the page says it: 1-based blocks and the exit it is read at.
function windowLabel(index, plan = tune.plan) {
  const w = plan?.windows?.[index];
  if (!w) return `window ${index + 1}`;
  const [a, b] = w.layers;
  const blocks = b - a === 1 ? `block ${b}` : `blocks ${a + 1}–${b}`;
  const lr = w.lr_scale != null && w.lr_scale !== 1 ? `, LR × ${w.lr_scale.toPrecision(2)}` : '';
  return `window ${index + 1} (${blocks}, ${w.exit_after === null ? 'model head' : `exit after ${w.exit_after}`}${lr})`;
}

function showPlan(plan) {
  const windowed = plan.windows.length > 1 || plan.windows[0]?.layers[0] > 0;
  const rows = [
    ['total', 'GPU memory planned', kib(plan.total_bytes)],
    ...plan.by_category.map((c) => [`cat-${c.category}`, `· ${c.category.replace('_', ' ')}`, kib(c.bytes)]),
    ['budget', 'Budget', plan.budget_bytes ? mib(plan.budget_bytes) : 'none (device limits only)'],
    ['changes', 'To fit', plan.changes.length ? plan.changes.join(', ') : 'nothing changed'],
    ['largest', 'Largest buffer', `${plan.largest[0]?.name} (${kib(plan.largest[0]?.bytes ?? 0)}; binding limit ${mib(plan.max_storage_buffer_binding_size)})`],
    ['device', 'Runs on', 'the GPU'],
  ];
  if (windowed) {
    rows.push(['windows', 'Windows (trained in turn)',
      `${plan.windows.map((w) => windowLabel(w.index, plan)).join('; ')}; ${plan.window_schedule ?? 'reference'} order`]);
    if (plan.exits.length) rows.push(['exits', 'Early exits after blocks', plan.exits.join(', ')]);
  }
  fillTable($('plan-table'), rows);
  $('plan-table').dataset.totalBytes = String(plan.total_bytes);
  $('plan-table').dataset.device = plan.device;
}

let checkTimer = 0;
function scheduleCheck() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkSettings, 250);
}

/// Checks the data and plans memory for the current settings (nothing is allocated).
async function checkSettings() {
  if (!model || !tune.worker || ['starting', 'running', 'pausing', 'paused'].includes(tune.state)) return;
  const seq = ++tune.checkSeq;
  const stale = () => seq !== tune.checkSeq;
  tune.ready = false;
  setTuneState(tune.state);
  showError('data-error', '');
  showError('plan-error', '');
  let data, options;
  try {
    options = readOptions();
  } catch (e) {
    showError('plan-error', messageOf(e));
    return;
  }
  $('data-status').textContent = 'Checking the data…';
  try {
    data = await currentData();
    if (stale()) return;
    showPreview(data.text);
    const info = await call('checkData', { name: data.name, text: data.text, kind: data.kind, options });
    if (stale()) return;
    showDataInfo(info, data);
  } catch (e) {
    if (stale()) return;
    $('data-status').textContent = 'The data cannot be used.';
    $('data-problems-box').hidden = true;
    showError('data-error', `${messageOf(e)}\nPick a plain-text file, or JSONL with one ` +
      '{"prompt", "response"} or {"question", "choices", "answer"} object per line (see data/README.md).');
    return;
  }
  $('plan-status').textContent = 'Planning GPU memory…';
  try {
    const plan = await call('plan', { options });
    if (stale()) return;
    showPlan(plan);
    {
      $('plan-status').textContent = plan.budget_bytes
        ? `Fits the budget of ${kib(plan.budget_bytes)}: ${kib(plan.total_bytes)} of GPU memory.`
        : `Needs ${kib(plan.total_bytes)} of GPU memory.`;
    }
    tune.ready = true;
  } catch (e) {
    if (stale()) return;
    $('plan-table').hidden = true;
    const msg = messageOf(e);
    const memory = /budget|too small|binding|fit/.test(msg);
    const noGpu = /no WebGPU adapter/.test(msg);
    $('plan-status').textContent = noGpu ? 'Tuning needs WebGPU.'
      : memory ? 'This run does not fit.' : 'These settings cannot run.';
    showError('plan-error', noGpu ? msg
      : memory ? `${msg}\nRaise the memory budget (or leave it empty), or lower the sequence length or the LoRA rank.`
        : `${msg}\nChange the mode or its settings above.`);
  }
  setTuneState(tune.state);
}

// ------------------------------------------------ progress, time and the loss plot

function elapsedMs() {
  return tune.elapsedMs + (tune.state === 'running' || tune.state === 'pausing'
    ? performance.now() - tune.sessionStart : 0);
}

function clock(ms) {
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}

function showProgress() {
  const bar = $('tune-progress');
  bar.max = Math.max(tune.total, 1);
  bar.value = tune.step;
  const last = tune.history.train[tune.history.train.length - 1];
  const perStep = tune.sessionSteps ? tune.sessionMs / tune.sessionSteps : 0;
  const remaining = perStep ? clock(perStep * (tune.total - tune.step)) : '…';
  const parts = [
    `Step ${tune.step} of ${tune.total}`,
    `elapsed ${clock(elapsedMs())}`,
    tune.step < tune.total ? `remaining ~${remaining}` : 'done',
  ];
  if (last && last[2] !== null && last[2] !== undefined) parts.push(windowLabel(last[2]));
  if (last) parts.push(`loss ${last[1].toFixed(4)}`);
  const lastVal = tune.history.val[tune.history.val.length - 1];
  if (lastVal) parts.push(`validation ${lastVal[1].toFixed(4)}`);
  if (tune.lastTokensPerS) {
    const t = tune.lastTokensPerS;
    parts.push(`${t < 10 ? t.toFixed(2) : Math.round(t)} tokens/s`);
  }
  const state = { paused: ' (paused)', pausing: ' (pausing…)', done: ' (finished)', cancelled: ' (cancelled)' }[tune.state] || '';
  $('tune-status').textContent = parts.join(' · ') + state;
  $('tune-status').dataset.step = String(tune.step);
  if (last && last[2] !== null && last[2] !== undefined) $('tune-status').dataset.window = String(last[2]);
}

function drawPlot() {
  const canvas = $('loss-plot');
  const ctx = canvas.getContext('2d');
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 800, cssH = canvas.clientHeight || 260;
  if (canvas.width !== Math.round(cssW * dpr)) { canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr); }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const { train, val } = tune.history;
  canvas.dataset.trainPoints = String(train.length);
  canvas.dataset.valPoints = String(val.length);
  // Windowed modes: [step, loss, window]; each window's losses are read at its own exit.
  const windows = [...new Set(train.map((p) => p[2]).filter((w) => w !== null && w !== undefined))];
  canvas.dataset.windows = windows.join(',');
  showLegend(windows);
  const pad = { l: 52, r: 12, t: 12, b: 28 };
  const w = cssW - pad.l - pad.r, h = cssH - pad.t - pad.b;
  ctx.strokeStyle = '#dde1ea';
  ctx.strokeRect(pad.l, pad.t, w, h);
  ctx.fillStyle = '#5b6477';
  ctx.font = '12px system-ui, sans-serif';
  if (!train.length) {
    ctx.fillText('The loss appears here once training starts.', pad.l + 12, pad.t + h / 2);
    return;
  }
  const all = [...train, ...val].map((p) => p[1]).filter(Number.isFinite);
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const margin = (hi - lo) * 0.05;
  lo -= margin; hi += margin;
  const maxStep = Math.max(tune.total, train[train.length - 1][0], 1);
  const x = (s) => pad.l + (s / maxStep) * w;
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * h;
  ctx.textAlign = 'right';
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    ctx.fillText(v.toFixed(2), pad.l - 6, y(v) + 4);
    ctx.strokeStyle = '#eef0f5';
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(pad.l + w, y(v)); ctx.stroke();
  }
  ctx.textAlign = 'center';
  ctx.fillText('0', x(0), cssH - 8);
  ctx.fillText(`step ${maxStep}`, x(maxStep) - 24, cssH - 8);
  ctx.lineWidth = 1.5;
  // One stroke per run of steps in the same window, joined to the previous point.
  let prev = null;
  for (let i = 0; i < train.length;) {
    const w = train[i][2];
    let j = i;
    while (j < train.length && train[j][2] === w) j++;
    ctx.strokeStyle = windowColour(w);
    ctx.beginPath();
    if (prev) ctx.moveTo(x(prev[0]), y(prev[1])); else ctx.moveTo(x(train[i][0]), y(train[i][1]));
    for (let k = i; k < j; k++) ctx.lineTo(x(train[k][0]), y(train[k][1]));
    ctx.stroke();
    if (j - i === 1 && !prev) {
      ctx.fillStyle = windowColour(w);
      ctx.fillRect(x(train[i][0]) - 2, y(train[i][1]) - 2, 4, 4);
    }
    prev = train[j - 1];
    i = j;
  }
  ctx.fillStyle = '#e0781f';
  for (const [s, v] of val) {
    ctx.beginPath(); ctx.arc(x(s), y(v), 4, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.lineWidth = 1;
}

// Training-loss colours by window (the first is the single-window colour).
const WINDOW_COLOURS = ['#2f6fde', '#17a589', '#8e44ad', '#c0392b', '#b7950b', '#2c3e50', '#d35400', '#7f8c8d'];
const windowColour = (w) => WINDOW_COLOURS[(w ?? 0) % WINDOW_COLOURS.length];

/// The plot's legend: one training-loss swatch per window seen (windowed modes).
function showLegend(windows) {
  const legend = $('loss-legend');
  const key = windows.join(',');
  if (legend.dataset.windows === key && legend.childNodes.length) return;
  legend.dataset.windows = key;
  const swatch = (cls, colour) => {
    const s = document.createElement('span');
    s.className = `swatch ${cls}`;
    if (colour) s.style.background = colour;
    return s;
  };
  const items = [];
  if (windows.length) {
    for (const w of windows) {
      const item = document.createElement('span');
      item.className = 'window';
      item.dataset.window = String(w);
      item.append(swatch('train', windowColour(w)), ` training loss, ${windowLabel(w)}`);
      items.push(item);
    }
  } else {
    items.push(swatch('train'), ' training loss');
  }
  items.push(swatch('val'), windows.length ? ' validation loss (at the window\'s exit; the last: whole model)' : ' validation loss');
  legend.replaceChildren(...items);
}

function showGpuBytes(bytes) {
  $('tune-gpu').dataset.device = 'gpu';
  const planned = tune.plan ? tune.plan.total_bytes : 0;
  $('tune-gpu').textContent = `GPU memory in use: ${kib(bytes)} of ${kib(planned)} planned` +
    (bytes === planned ? ' (exactly the plan: everything is allocated once, up front)' : '');
  $('tune-gpu').dataset.bytes = String(bytes);
}

// ------------------------------------------------ runs

async function startRun(run, checkpoint) {
  showTuneError('');
  $('adapter-links').hidden = true;
  setTuneState('starting');
  $('tune-status').textContent = checkpoint ? 'Preparing the data and resuming the saved run…' : 'Preparing the data and allocating GPU memory…';
  await nextFrame();
  let made;
  try {
    made = await call('create', {
      name: run.data.name, text: run.data.text, kind: run.data.kind,
      options: run.options, checkpoint, save_every: run.save_every,
    });
  } catch (e) {
    setTuneState('error');
    $('tune-status').textContent = 'Not started.';
    showTuneError(`${messageOf(e)}\n${/budget/.test(messageOf(e))
      ? 'Raise the memory budget, or lower the sequence length or the LoRA rank.'
      : 'Check the data and settings above, then press Start again.'}`);
    return;
  }
  tune.created = true;
  tune.run = { ...run, data: run.data.source === 'file' ? run.data : { ...run.data, text: undefined } };
  tune.plan = made.plan;
  tune.device = made.device;
  tune.total = made.total;
  tune.step = made.step;
  tune.sessionSteps = 0;
  tune.sessionMs = 0;
  showPlan(made.plan);
  $('plan-status').textContent = `This run holds ${kib(made.plan.allocated_bytes)} of GPU memory.`;
  showError('plan-error', '');
  showDataInfo(made.data, run.data);
  showGpuBytes(made.plan.allocated_bytes);
  $('saved-run').hidden = true;
  drawPlot();
  if (made.step >= made.total) {
    setTuneState('done');
    showProgress();
    return;
  }
  await runOn();
}

async function runOn() {
  tune.sessionStart = performance.now();
  setTuneState('running');
  showProgress();
  await call('run');
}

async function onStart() {
  let data, options;
  try {
    options = readOptions();
    data = await currentData();
  } catch (e) {
    showTuneError(messageOf(e));
    return;
  }
  tune.history = { train: [], val: [] };
  tune.speeds = [];
  tune.elapsedMs = 0;
  tune.lastTokensPerS = 0;
  const saveEvery = Math.max(1, Number($('opt-save').value) || 10);
  await startRun({
    model: { name: modelInfo.name, bytes: modelInfo.bytes },
    data,
    options,
    save_every: saveEvery,
  }, null);
}

async function onResumeSaved() {
  showTuneError('');
  let rec;
  try { rec = await idbGet(RUN_KEY); } catch (e) { showTuneError(messageOf(e)); return; }
  if (!rec) { $('saved-run').hidden = true; return; }
  if (!modelInfo || rec.model.name !== modelInfo.name || rec.model.bytes !== modelInfo.bytes) {
    showTuneError(`The saved run was tuned on ${rec.model.name} (${mib(rec.model.bytes)}), but the page ` +
      `has ${modelInfo ? `${modelInfo.name} (${mib(modelInfo.bytes)})` : 'no model'} loaded. Load that model ` +
      '(pick the same .gguf file above), then resume.');
    return;
  }
  writeOptions(rec.options, rec.save_every);
  let data = rec.data;
  if (data.source !== 'file') {
    document.querySelector(`input[name=data-source][value="${data.source}"]`).checked = true;
    try { data = await currentData(); } catch (e) { showTuneError(messageOf(e)); return; }
  } else {
    document.querySelector('input[name=data-source][value="file"]').checked = true;
    tune.file = { name: data.name, text: data.text };
    $('data-kind').value = data.kind;
  }
  tune.history = rec.history;
  tune.elapsedMs = rec.elapsedMs;
  tune.lastTokensPerS = 0;
  await startRun({ model: rec.model, data, options: rec.options, save_every: rec.save_every }, rec.checkpoint);
}

async function onDiscardSaved() {
  try { await idbDelete(RUN_KEY); } catch { /* nothing stored */ }
  $('saved-run').hidden = true;
}

async function onDownload() {
  showTuneError('');
  let files;
  try {
    files = await call('adapter');
  } catch (e) {
    showTuneError(`The adapter could not be exported: ${messageOf(e)}`);
    return;
  }
  const named = [
    ['adapter_model.safetensors', new Blob([files.safetensors], { type: 'application/octet-stream' })],
    ['adapter_config.json', new Blob([files.config], { type: 'application/json' })],
  ];
  if (files.exits) named.push(['exits.safetensors', new Blob([files.exits], { type: 'application/octet-stream' })]);
  const links = named.map(([name, blob]) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.textContent = `${name} (${kib(blob.size)})`;
    return a;
  });
  const box = $('adapter-links');
  box.replaceChildren('The PEFT adapter (load it with peft.PeftModel.from_pretrained, or edge-llm --adapter DIR): ',
    links[0], ' and ', links[1]);
  if (links[2]) {
    box.append('; its early exits (PEFT has none; edge-llm reads them from the same directory): ', links[2]);
  }
  box.hidden = false;
  for (const a of links) a.click();
}

async function onWorkerEvent(m) {
  switch (m.event) {
    case 'token':
    case 'eval-progress':
      onEvalEvent(m);
      break;
    case 'step': {
      const r = m.report;
      tune.step = r.step;
      tune.total = r.total_steps;
      tune.sessionSteps += 1;
      tune.sessionMs += r.step_ms;
      tune.lastTokensPerS = r.tokens_per_s;
      tune.history.train.push([r.step, r.loss, r.window ?? null]);
      tune.speeds.push([r.step, r.tokens_per_s, r.step_ms]);
      if (r.val_loss !== null && r.val_loss !== undefined) tune.history.val.push([r.step, r.val_loss]);
      showGpuBytes(r.gpu_bytes);
      showProgress();
      drawPlot();
      break;
    }
    case 'checkpoint':
      await saveRun(m.checkpoint, m.step, false);
      break;
    case 'paused':
      tune.elapsedMs = elapsedMs();
      setTuneState('paused');
      await saveRun(m.checkpoint, m.step, false);
      showProgress();
      break;
    case 'done':
      tune.elapsedMs = elapsedMs();
      if (m.val_loss !== null && !tune.history.val.some(([s]) => s === m.step)) {
        tune.history.val.push([m.step, m.val_loss]);
      }
      document.querySelector('input[name=eval-source][value=tuned]').disabled = false;
      document.querySelector('input[name=eval-source][value=tuned]').checked = true;
      setTuneState('done');
      await saveRun(m.checkpoint, m.step, true);
      showProgress();
      drawPlot();
      break;
    case 'cancelled':
      tune.created = false;
      tune.elapsedMs = 0;
      setTuneState('cancelled');
      try { await idbDelete(RUN_KEY); } catch { /* nothing stored */ }
      showProgress();
      break;
    case 'error':
      tune.elapsedMs = elapsedMs();
      setTuneState('error');
      showTuneError(`Training stopped: ${m.message}\nThe last checkpoint is kept in this browser; reload ` +
        'the page to resume from it.');
      break;
    default:
      break;
  }
}

let tuneWorkerReady = Promise.resolve();

function setupTuning() {
  setTuneState('idle');
  drawPlot();
  try {
    tune.worker = new Worker('worker.js', { type: 'module' });
  } catch (e) {
    showTuneError(`The tuning worker could not start (${messageOf(e)}). Use a current Chrome or Edge.`);
    return;
  }
  tune.worker.onmessage = (e) => {
    const m = e.data;
    if (m.id) {
      const p = pending.get(m.id);
      pending.delete(m.id);
      if (m.ok) p.resolve(m.result); else p.reject(new Error(m.error));
    } else {
      onWorkerEvent(m);
    }
  };
  tune.worker.onerror = (e) => {
    setTuneState('error');
    showTuneError(`The tuning worker failed: ${e.message || 'see the browser console'}. Reload the page.`);
  };
  tuneWorkerReady = call('init').then((r) => {
    if (r.gpuError) {
      showTuneError(`Tuning needs WebGPU, and this page has none in a worker: ${r.gpuError}`);
    }
  }, (e) => {
    showTuneError(`The tuning worker did not start: ${messageOf(e)}. Build the module with ` +
      'scripts/build-wasm.sh and reload.');
  });

  $('opt-mode').addEventListener('change', updateModeControls);
  updateModeControls();
  for (const el of document.querySelectorAll('input[name=data-source], #data-kind, #settings-box input, #settings-box select')) {
    el.addEventListener('change', scheduleCheck);
    el.addEventListener('input', scheduleCheck);
  }
  $('data-file').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    document.querySelector('input[name=data-source][value="file"]').checked = true;
    try {
      tune.file = { name: file.name, text: await file.text() };
    } catch (err) {
      tune.file = null;
      showError('data-error', `Could not read ${file.name}: ${messageOf(err)}`);
      return;
    }
    scheduleCheck();
  });
  $('tune-start').addEventListener('click', onStart);
  $('tune-pause').addEventListener('click', async () => {
    setTuneState('pausing');
    showProgress();
    await call('pause');
  });
  $('tune-resume').addEventListener('click', runOn);
  $('tune-cancel').addEventListener('click', async () => {
    setTuneState('pausing');
    await call('cancel');
  });
  $('tune-download').addEventListener('click', onDownload);
  $('resume-saved').addEventListener('click', onResumeSaved);
  $('discard-saved').addEventListener('click', onDiscardSaved);
  window.addEventListener('resize', drawPlot);
  setInterval(() => { if (tune.state === 'running') showProgress(); }, 1000);
}

/// A model was loaded on the page: the worker gets its own copy; small models default to
/// short rows.
async function tuneModelLoaded(bytes) {
  await tuneWorkerReady;
  if (!tune.worker) return;
  tune.created = false;
  try {
    await call('loadModel', { bytes }, [bytes.buffer]);
  } catch (e) {
    showTuneError(`The tuning worker could not load the model: ${messageOf(e)}`);
    return;
  }
  if (!$('opt-seq').dataset.touched) {
    $('opt-seq').value = modelInfo.config.hidden < 256 ? 64 : 256;
  }
  // Exit stride and partial depth: 6 blocks (five windows of the 30-block default model),
  // at most the model's blocks.
  const blocks = modelInfo.config.n_layers;
  for (const id of ['opt-exit-stride', 'opt-partial']) {
    $(id).max = String(blocks);
    if (!$(id).dataset.touched || Number($(id).value) > blocks) $(id).value = String(Math.min(6, blocks));
  }
  updateModeControls();
  setTuneState('idle');
  evalModelLoaded();
  await showSavedRun();
  await checkSettings();
}

// ---------------------------------------------------------------- evaluate and chat

// Evaluation and chat run in the same worker as tuning, on a model built with the chosen
// adapter (the worker rebuilds it only when that changes).
const evalState = { busy: false, mcQuestions: null, validationText: null, pieces: 0,
  // The latest results, for the run report.
  results: { perplexity: [], accuracy: null, chat: null } };

const evalSource = () => document.querySelector('input[name=eval-source]:checked').value;

const SOURCE_LABELS = { base: 'base model', tuned: 'tuned adapter', file: 'adapter from disk' };

function updateEvalControls() {
  const tuningBusy = ['starting', 'running', 'pausing'].includes(tune.state);
  const tunedRadio = document.querySelector('input[name=eval-source][value=tuned]');
  tunedRadio.disabled = !(tune.created && ['paused', 'done'].includes(tune.state));
  if (tunedRadio.disabled && tunedRadio.checked) {
    document.querySelector('input[name=eval-source][value=base]').checked = true;
  }
  const off = !model || !tune.worker || evalState.busy || tuningBusy || cmp.state === 'running';
  for (const id of ['ppl-run', 'mc-run', 'chat-send']) $(id).disabled = off;
  $('eval-model-status').textContent = tuningBusy
    ? 'Tuning is running: pause it or let it finish to evaluate.'
    : ($('eval-model-status').dataset.info || 'Built on first use.');
}

function showEvalModel(info) {
  const parts = [`Evaluating with the ${SOURCE_LABELS[info.source]}: ${mib(info.lm_bytes)} on the GPU ` +
    `(KV cache for ${info.max_len} positions)`];
  parts.push(info.trainer_bytes
    ? `; the paused run's trainer holds ${mib(info.trainer_bytes)} more.`
    : '.');
  if (info.lm_exits && info.lm_exits.length) {
    parts.push(` Its early exits (after blocks ${info.lm_exits.join(', ')}) run on the GPU with it: accuracy and ` +
      'chat vote over them; perplexity reads the model\'s own head (the exits are not applied there).');
  }
  const el = $('eval-model-status');
  el.dataset.info = parts.join('');
  el.dataset.lmBytes = String(info.lm_bytes);
  el.dataset.exits = (info.lm_exits || []).join(',');
  el.textContent = el.dataset.info;
}

/// Runs `fn` with the evaluation controls disabled, showing any error.
async function evalTask(fn) {
  if (evalState.busy) return;
  evalState.busy = true;
  showError('eval-error', '');
  updateEvalControls();
  try {
    await fn();
  } catch (e) {
    showError('eval-error', messageOf(e));
  } finally {
    evalState.busy = false;
    updateEvalControls();
  }
}

async function pplText() {
  const src = document.querySelector('input[name=ppl-source]:checked').value;
  if (src === 'pasted') {
    const text = $('ppl-text').value;
    if (!text.trim()) throw new Error('Paste a text to score first.');
    return { name: 'the pasted text', text };
  }
  if (src === 'validation') {
    if (!evalState.validationText) {
      const r = await fetch('data/shakespeare/validation.txt');
      if (!r.ok) throw new Error(`could not fetch data/shakespeare/validation.txt (HTTP ${r.status}); start the page with scripts/run.sh`);
      // Only the first tokens are scored: a slice is plenty.
      evalState.validationText = (await r.text()).slice(0, 64 * 1024);
    }
    return { name: 'Shakespeare validation', text: evalState.validationText };
  }
  const data = await currentData();
  return { name: data.name, text: data.text };
}

async function onPerplexity() {
  await evalTask(async () => {
    const maxTokens = Number($('ppl-max').value);
    if (!Number.isInteger(maxTokens) || maxTokens < 2) throw new Error('Tokens must be a whole number of at least 2.');
    const { name, text } = await pplText();
    const source = evalSource();
    $('ppl-status').textContent = `Scoring ${name} with the ${SOURCE_LABELS[source]}…`;
    const r = await call('perplexity', { source, text, max_tokens: maxTokens });
    showEvalModel(r);
    const line = `${SOURCE_LABELS[source]}: perplexity ${r.perplexity.toFixed(3)} on ${name} ` +
      `(${r.tokens} tokens, ${r.seconds.toFixed(1)} s)`;
    $('ppl-status').textContent = line;
    $('ppl-status').dataset.perplexity = String(r.perplexity);
    const li = document.createElement('li');
    li.textContent = line;
    li.dataset.perplexity = String(r.perplexity);
    li.dataset.source = source;
    li.dataset.tokens = String(r.tokens);
    $('ppl-history').append(li);
    evalState.results.perplexity.push({ source, text: name, model: modelInfo?.name, perplexity: r.perplexity,
      mean_nll: r.mean_nll, tokens: r.tokens, seconds: r.seconds });
  });
}

const LETTERS = 'ABCDEFGHIJ';

async function onMc() {
  await evalTask(async () => {
    const limit = Number($('mc-n').value);
    if (!Number.isInteger(limit) || limit < 1) throw new Error('Questions must be a whole number of at least 1.');
    if (!evalState.mcQuestions) {
      const r = await fetch('data/arc-easy/validation.jsonl');
      if (!r.ok) throw new Error(`could not fetch data/arc-easy/validation.jsonl (HTTP ${r.status}); start the page with scripts/run.sh`);
      evalState.mcQuestions = await r.text();
    }
    const source = evalSource();
    $('mc-status').textContent = `Scoring ${limit} questions with the ${SOURCE_LABELS[source]}…`;
    delete $('mc-status').dataset.accuracy;
    const r = await call('evalMc', { source, jsonl: evalState.mcQuestions, limit, vote: $('eval-vote').value });
    showEvalModel(r);
    const voted = r.vote ? ` voted by ${r.vote} over exits after blocks ${r.exits.map((e) => e.after).join(', ')} (${r.device.toUpperCase()})` : '';
    $('mc-status').textContent = `${SOURCE_LABELS[source]}${voted}: accuracy ${r.accuracy.toFixed(3)} ` +
      `(${r.correct} of ${r.n} right, ${r.seconds.toFixed(1)} s; chance is about 0.25)`;
    $('mc-status').dataset.accuracy = String(r.accuracy);
    const { questions, ...accuracy } = r;
    evalState.results.accuracy = { ...accuracy, source, model: modelInfo?.name, data: 'arc-easy/validation.jsonl' };
    showExitAccuracy(r);
    const rows = r.questions.map((q, i) => {
      const tr = document.createElement('tr');
      const right = q.predicted === q.answer;
      tr.className = right ? 'right' : 'wrong';
      tr.dataset.predicted = String(q.predicted);
      tr.dataset.answer = String(q.answer);
      if (q.exit_predictions) {
        tr.title = `each exit's answer: ${q.exit_predictions.map((p, k) =>
          `after block ${r.exits[k].after}: ${LETTERS[p]}`).join(', ')}`;
      }
      const cells = [String(i + 1), q.question,
        `${LETTERS[q.predicted]}. ${q.choices[q.predicted]}`,
        `${LETTERS[q.answer]}. ${q.choices[q.answer]}`, right ? '✓' : '✗'];
      tr.append(...cells.map((c) => { const td = document.createElement('td'); td.textContent = c; return td; }));
      return tr;
    });
    $('mc-table').querySelector('tbody').replaceChildren(...rows);
    $('mc-table').hidden = false;
  });
}

/// With early exits: each exit's accuracy on its own and each voting rule's.
function showExitAccuracy(r) {
  const table = $('mc-exits');
  if (!r.exits) { table.hidden = true; return; }
  const acc = (a, c) => `${a.toFixed(3)} (${c} of ${r.n})`;
  fillTable(table, [
    ...r.exits.map((e) => [`exit-${e.after}`, `Exit after block ${e.after} alone`, acc(e.accuracy, e.correct)]),
    ...r.votes.map((v) => [`vote-${v.rule}`, `Vote: ${v.rule}${v.rule === r.vote ? ' (chosen)' : ''}`, acc(v.accuracy, v.correct)]),
  ]);
  for (const tr of table.querySelectorAll('tbody tr')) {
    const [kind, what] = tr.dataset.key.split('-');
    const item = kind === 'exit' ? r.exits.find((e) => String(e.after) === what) : r.votes.find((v) => v.rule === what);
    tr.dataset.accuracy = String(item.accuracy);
    if (kind === 'vote' && what === r.vote) tr.classList.add('chosen');
  }
}

async function onChat() {
  await evalTask(async () => {
    const prompt = $('chat-input').value;
    if (!prompt.trim()) throw new Error('Type a message first.');
    const num = (id, label, min, int) => {
      const v = Number($(id).value);
      if (!Number.isFinite(v) || v < min || (int && !Number.isInteger(v))) {
        throw new Error(`${label} must be ${int ? 'a whole number' : 'a number'} of at least ${min}.`);
      }
      return v;
    };
    const options = {
      temperature: num('chat-temp', 'Temperature', 0, false),
      topP: num('chat-topp', 'Top-p', 0.01, false),
      maxTokens: num('chat-max', 'Max new tokens', 1, true),
      seed: num('chat-seed', 'Seed', 0, true),
      chat: $('chat-template').checked,
      vote: $('eval-vote').value,
    };
    if (options.topP > 1) throw new Error('Top-p must be at most 1.');
    const out = $('chat-output');
    const you = document.createElement('span');
    you.className = 'prompt';
    you.textContent = `You: ${prompt}`;
    const reply = document.createElement('span');
    reply.id = 'chat-reply';
    out.replaceChildren(you, reply);
    evalState.pieces = 0;
    out.dataset.pieces = '0';
    const source = evalSource();
    $('chat-status').textContent = `Generating with the ${SOURCE_LABELS[source]}…`;
    const r = await call('generate', { source, prompt, options });
    showEvalModel(r);
    reply.textContent = r.text;  // the streamed pieces joined, made exact
    const st = $('chat-status');
    st.textContent = `${r.tokens} tokens in ${r.seconds.toFixed(2)} s: ${r.tokens_per_s.toFixed(1)} tokens/s ` +
      `(${r.decode_tokens_per_s.toFixed(1)} tokens/s after the ${r.prompt_tokens}-token prompt's ` +
      `${r.prefill_seconds.toFixed(2)} s)${r.vote ? `, sampled from the exits' distributions voted by ${r.vote} on the ${r.device.toUpperCase()}` : ''}.`;
    st.dataset.vote = r.vote ?? '';
    st.dataset.tokens = String(r.tokens);
    st.dataset.tokensPerS = String(r.tokens_per_s);
    st.dataset.decodeTokensPerS = String(r.decode_tokens_per_s);
    evalState.results.chat = { ...r, source, model: modelInfo?.name, prompt };
  });
}

function onEvalEvent(m) {
  if (m.event === 'token') {
    const reply = $('chat-reply');
    if (reply) reply.textContent += m.text;
    evalState.pieces += 1;
    $('chat-output').dataset.pieces = String(evalState.pieces);
  } else if (m.what === 'perplexity') {
    $('ppl-status').textContent = `Scoring: ${m.done} of ${m.total} tokens…`;
  } else if (m.what === 'mc') {
    $('mc-status').textContent = `Scoring: ${m.done} of ${m.total} questions, ${m.correct} right so far…`;
  }
}

async function onAdapterFiles(e) {
  const files = Array.from(e.target.files);
  const isExits = (f) => /exits[^/]*\.safetensors$/.test(f.name);
  const st = files.find((f) => f.name.endsWith('.safetensors') && !isExits(f));
  const cfg = files.find((f) => f.name.endsWith('.json'));
  const ex = files.find(isExits);
  await evalTask(async () => {
    if (!st || !cfg) {
      throw new Error('Pick both files of the PEFT adapter: adapter_model.safetensors and adapter_config.json ' +
        '(and exits.safetensors for an adapter with early exits).');
    }
    const safetensors = new Uint8Array(await st.arrayBuffer());
    const exits = ex ? new Uint8Array(await ex.arrayBuffer()) : null;
    const r = await call('loadAdapter', { safetensors, config: await cfg.text(), exits, name: st.name },
      [safetensors.buffer, ...(exits ? [exits.buffer] : [])]);
    const radio = document.querySelector('input[name=eval-source][value=file]');
    radio.disabled = false;
    radio.checked = true;
    $('eval-model-status').dataset.info = `Adapter ${r.name} loaded (rank ${r.rank}` +
      `${r.exits.length ? `, early exits after blocks ${r.exits.join(', ')}` : ''}); the model is built on first use.`;
  });
}

function setupEval() {
  $('ppl-run').addEventListener('click', onPerplexity);
  $('mc-run').addEventListener('click', onMc);
  $('chat-send').addEventListener('click', onChat);
  $('adapter-files').addEventListener('change', onAdapterFiles);
  $('ppl-text').addEventListener('input', () => {
    document.querySelector('input[name=ppl-source][value=pasted]').checked = true;
  });
  updateEvalControls();
}

/// A new model: adapters from disk and results belong to the old one.
function evalModelLoaded() {
  const radio = document.querySelector('input[name=eval-source][value=file]');
  radio.disabled = true;
  document.querySelector('input[name=eval-source][value=base]').checked = true;
  delete $('eval-model-status').dataset.info;
  $('ppl-history').replaceChildren();
  updateEvalControls();
}

// ---------------------------------------------------------------- compression

// Profiling and compression run in a worker of their own (another instance of worker.js):
// CPU work that blocks its worker until it ends, so Cancel terminates that worker and the
// tuning worker (a paused run, the tuned adapter, the evaluation model) keeps everything.
const cmp = {
  state: 'idle',       // idle | running | done | cancelled | error
  job: null,           // {call, terminate} of the running job's worker
  original: null,      // {name, load} of the uncompressed model compression reads
  policy: null,        // {name, text} of the policy file picked
  summary: null,       // the last compression's summary
  profile: null,       // the last profile shown
  file: null,          // {name, blob} of the compressed model
  startedAt: 0,
  stage: null,         // {name, done, total, startedAt}
};

// For the browser console and the tests.
window.edgeLlmCompress = cmp;

const STAGE_LABELS = {
  calibrate: 'Calibrating (one forward per row)',
  fisher: 'Fisher estimate (one backward per row)',
  profile: 'Profiling each block at every sparsity and width',
  compress: 'Compressing the projections',
};

function updateCompressControls() {
  const tuningBusy = ['starting', 'running', 'pausing', 'paused'].includes(tune.state);
  const running = cmp.state === 'running';
  document.body.dataset.compressState = cmp.state;
  const off = !model || running || tuningBusy;
  $('cmp-profile').disabled = off;
  $('cmp-run').disabled = off;
  $('cmp-cancel').disabled = !running;
  $('cmp-download').disabled = !cmp.file || running;
  $('compress-box').disabled = running;
  $('report-download').disabled = !model;
}

/// A worker for one job: requests as the tuning worker's, events to `onEvent`.
function jobWorker(onEvent) {
  const w = new Worker('worker.js', { type: 'module' });
  const pending = new Map();
  let next = 1;
  const failAll = (err) => {
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  w.onmessage = (e) => {
    const m = e.data;
    if (!m.id) { onEvent(m); return; }
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (p) { if (m.ok) p.resolve(m.result); else p.reject(new Error(m.error)); }
  };
  w.onerror = (e) => failAll(new Error(`the compression worker failed: ${e.message || 'see the browser console'}`));
  return {
    call(op, args = {}, transfer = []) {
      return new Promise((resolve, reject) => {
        const id = next++;
        pending.set(id, { resolve, reject });
        w.postMessage({ id, op, args }, transfer);
      });
    },
    terminate(reason) {
      w.terminate();
      failAll(new Error(reason || 'stopped'));
    },
  };
}

function readCompressOptions() {
  const num = (id, label, { int = false, min = 0, max = Infinity } = {}) => {
    const raw = $(id).value.trim();
    const v = Number(raw);
    if (raw === '' || !Number.isFinite(v) || (int && !Number.isInteger(v)) || v < min || v > max) {
      throw new Error(`${label} must be ${int ? 'a whole number' : 'a number'} from ${min}${max < Infinity ? ` to ${max}` : ' up'}.`);
    }
    return v;
  };
  const allocation = $('cmp-allocation').value;
  const bits = num('cmp-bits', 'Bits', { min: 2, max: 8 });
  if (allocation === 'uniform' && ![2, 3, 4, 8].includes(bits)) {
    throw new Error('With uniform allocation, bits must be 2, 3, 4 or 8 (LUC takes a mean such as 3.5).');
  }
  return {
    sparsity: num('cmp-sparsity', 'Mean sparsity', { min: 0, max: 0.9 }),
    bits,
    allocation,
    method: $('cmp-method').value,
    pattern: $('cmp-pattern').value,
    quant: $('cmp-quant').value,
    calib_rows: num('cmp-rows', 'Calibration rows', { int: true, min: 1 }),
    seq_len: num('cmp-seq', 'Tokens per row', { int: true, min: 2 }),
    loss_rows: num('cmp-loss-rows', 'Loss rows', { int: true, min: 0 }),
    fisher_rows: num('cmp-fisher-rows', 'Fisher rows', { int: true, min: 0 }),
    sparsity_rule: $('cmp-sparsity-rule').value,
  };
}

/// The calibration text: the user's file (or the tuning data), else the general text.
async function calibData() {
  const choice = $('cmp-calib').value;
  if (choice === 'tune' || (choice === 'auto' && dataSource() === 'file' && tune.file)) {
    return currentData();
  }
  return builtinData('builtin:shakespeare');
}

function showCompressProgress() {
  const st = cmp.stage;
  const bar = $('cmp-progress');
  const status = $('cmp-status');
  const elapsed = performance.now() - cmp.startedAt;
  if (!st) {
    bar.removeAttribute('value');
    status.textContent = `Starting (reading the model) · elapsed ${clock(elapsed)}`;
    return;
  }
  bar.max = Math.max(st.total, 1);
  bar.value = st.done;
  const inStage = performance.now() - st.startedAt;
  const remaining = st.done > 0 ? clock((inStage / st.done) * (st.total - st.done)) : '…';
  status.textContent = `${STAGE_LABELS[st.name] ?? st.name}: ${st.done} of ${st.total} · elapsed ${clock(elapsed)}` +
    ` · this stage ~${remaining} left`;
  status.dataset.stage = st.name;
  status.dataset.progress = `${st.done}/${st.total}`;
}

function onCompressEvent(m) {
  if (m.event !== 'compress-progress') return;
  if (!cmp.stage || cmp.stage.name !== m.stage) {
    cmp.stage = { name: m.stage, done: 0, total: m.total, startedAt: performance.now() };
    cmp.stages = [...(cmp.stages || []), m.stage];
    document.body.dataset.compressStages = cmp.stages.join(',');
  }
  cmp.stage.done = m.done;
  cmp.stage.total = m.total;
  showCompressProgress();
}

/// Runs `op` ('profile' | 'compress') on the original model in a job worker.
async function runCompressJob(op) {
  showError('cmp-error', '');
  if (cmp.job) return;
  if (['starting', 'running', 'pausing', 'paused'].includes(tune.state)) {
    showError('cmp-error', 'A tuning run is in progress: cancel it or let it finish before compressing.');
    return;
  }
  if (!cmp.original) {
    showError('cmp-error', 'This model is already compressed and the page does not have the original it came ' +
      'from: load the original .gguf above, then compress it.');
    return;
  }
  let options, data;
  try {
    options = readCompressOptions();
    data = await calibData();
  } catch (e) {
    showError('cmp-error', messageOf(e));
    return;
  }
  const source = cmp.original;
  const job = jobWorker(onCompressEvent);
  cmp.job = job;
  cmp.state = 'running';
  cmp.stage = null;
  cmp.stages = [];
  delete document.body.dataset.compressStages;
  cmp.startedAt = performance.now();
  setTuneState(tune.state);
  showCompressProgress();
  let ticker = setInterval(showCompressProgress, 1000);
  const stopTicker = () => { clearInterval(ticker); ticker = 0; };
  try {
    const bytes = await source.load();
    await job.call('init', { gpu: false });
    await job.call('loadModel', { bytes }, [bytes.buffer]);
    const args = { name: data.name, text: data.text, kind: data.kind, options, device: $('cmp-device').value };
    if (op === 'profile') {
      const p = await job.call('profile', args);
      stopTicker();
      cmp.state = 'done';
      showProfile(p, data, performance.now() - cmp.startedAt);
    } else {
      const r = await job.call('compress', { ...args, policy: cmp.policy ? cmp.policy.text : null });
      stopTicker();
      cmp.state = 'done';
      await onCompressed(r, source, performance.now() - cmp.startedAt);
    }
  } catch (e) {
    if (cmp.state === 'cancelled') {
      $('cmp-status').textContent = 'Cancelled; the loaded model and any tuning are as they were.';
    } else {
      cmp.state = 'error';
      const msg = messageOf(e);
      $('cmp-status').textContent = op === 'profile' ? 'Profiling failed.' : 'Compression failed.';
      const policyHint = cmp.policy && /policy/.test(msg)
        ? `\nThe policy file ${cmp.policy.name} does not fit this model: fix it, or clear it to use the settings above.`
        : '';
      const memHint = /memory|unreachable|RuntimeError/i.test(msg)
        ? '\nThe tab may have run out of memory: use fewer calibration rows or shorter rows.' : '';
      showError('cmp-error', `${msg}${policyHint}${memHint}\nNothing was changed: the loaded model and any tuning are as they were.`);
    }
  } finally {
    stopTicker();
    job.terminate('finished');
    cmp.job = null;
    $('cmp-progress').value = $('cmp-progress').max;
    setTuneState(tune.state);
  }
}

function onCompressCancel() {
  if (!cmp.job) return;
  cmp.state = 'cancelled';
  cmp.job.terminate('cancelled');
}

const fixed = (v, d = 3) => (v === null || v === undefined ? '—' : Number(v).toPrecision(d));

/// The per-block table: sensitivity bars (from the profile), sparsity bars and bits.
function showLayers(layers) {
  const maxP = Math.max(...layers.map((l) => l.prune_sensitivity ?? 0), 1e-30);
  const maxQ = Math.max(...layers.map((l) => l.quant_sensitivity ?? 0), 1e-30);
  const bar = (cls, frac, text) => {
    const td = document.createElement('td');
    td.className = 'num';
    if (frac !== null) {
      const b = document.createElement('span');
      b.className = `bar ${cls}`;
      b.style.width = `${Math.max(0, Math.min(1, frac)) * 6}rem`;
      td.append(b);
    }
    td.append(text);
    return td;
  };
  const rows = layers.map((l) => {
    const tr = document.createElement('tr');
    tr.dataset.layer = String(l.layer);
    if (l.sparsity !== undefined) tr.dataset.sparsity = String(l.sparsity);
    if (l.bits !== undefined) tr.dataset.bits = String(l.bits);
    if (l.prune_sensitivity !== null && l.prune_sensitivity !== undefined) tr.dataset.pruneSensitivity = String(l.prune_sensitivity);
    const ps = l.prune_sensitivity ?? null, qs = l.quant_sensitivity ?? null;
    const block = document.createElement('td');
    block.textContent = String(l.layer + 1);
    const stored = document.createElement('td');
    stored.textContent = l.format ? `${l.format}${l.values ? ` (${l.values} values)` : ''}` : '—';
    const bits = document.createElement('td');
    bits.className = 'num';
    bits.textContent = l.bits ?? '—';
    tr.append(block,
      bar('prune', ps === null ? null : ps / maxP, fixed(ps)),
      bar('quant', qs === null ? null : qs / maxQ, fixed(qs)),
      bar('sparsity', l.sparsity ?? null, l.sparsity === undefined ? '—' : l.sparsity.toFixed(3)),
      bits, stored);
    return tr;
  });
  $('cmp-layers').querySelector('tbody').replaceChildren(...rows);
  $('cmp-layers').hidden = false;
}

function showProfile(p, data, ms) {
  cmp.profile = p;
  showLayers(p.prune_sensitivity.map((s, i) => ({ layer: i, prune_sensitivity: s, quant_sensitivity: p.quant_sensitivity[i] })));
  const how = p.cached ? 'from this browser\'s cache' : `measured in ${p.seconds.toFixed(1)} s (calibration on the ${p.device.toUpperCase()})`;
  const status = $('cmp-status');
  status.textContent = `Profile of ${p.prune_sensitivity.length} blocks on ${data.name}: ${how} ` +
    `(key ${p.key}). Sensitivity is the loss change with only that block compressed` +
    `${p.profile.base_loss === null ? ' (here: the output error, no loss rows)' : ''}; LUC spares the most sensitive blocks.`;
  status.dataset.profileKey = p.key;
  status.dataset.profileCached = String(p.cached);
  delete status.dataset.stage;
  $('cmp-summary').hidden = true;
  $('cmp-notes').hidden = true;
}

async function onCompressed(r, source, ms) {
  const s = r.summary;
  cmp.summary = s;
  const base = source.name.split('/').pop().replace(/\.gguf$/i, '');
  const name = `${base}-${s.policy.allocation}-s${s.options.sparsity}-b${s.options.bits}.gguf`;
  cmp.file = { name, blob: new Blob([r.bytes], { type: 'application/octet-stream' }) };
  showLayers(s.layers);
  const counts = s.layers.map((l) => l.f32_bytes);
  const meanBits = s.layers.reduce((a, l, i) => a + l.bits * counts[i], 0) / counts.reduce((a, b) => a + b, 0);
  const meanSparsity = s.layers.reduce((a, l) => a + l.sparsity, 0) / s.layers.length;
  const pct = (a, b) => `${((100 * a) / b).toFixed(1)} %`;
  const prof = s.profile_info
    ? (s.profile_cached ? `cached in this browser (key ${s.profile_info.key})`
      : `measured in ${s.profile_info.seconds.toFixed(1)} s and cached (key ${s.profile_info.key})`)
    : 'none (not LUC)';
  fillTable($('cmp-summary'), [
    ['allocation', 'Allocation', s.user_policy ? `policy file ${cmp.policy?.name ?? ''} (${s.policy.allocation})` : s.policy.allocation],
    ['methods', 'Methods', `${s.policy.prune} ${s.policy.pattern} pruning, ${s.policy.quant} quantization, groups of ${s.policy.group}${s.policy.symmetric ? ', symmetric' : ', asymmetric'}`],
    ['mean', 'Mean sparsity · bits per weight', `${meanSparsity.toFixed(3)} · ${meanBits.toFixed(2)}`],
    ['file', 'File', `${mib(s.file_bytes)} (original ${mib(s.original_file_bytes)}: ${pct(s.file_bytes, s.original_file_bytes)})`],
    ['projections', 'Projections', `${mib(s.projection_f32_bytes)} f32 → ${mib(s.projection_packed_bytes)} packed (${pct(s.projection_packed_bytes, s.projection_f32_bytes)})`],
    ['calibration', 'Calibration', `${s.calibration.rows} rows, ${s.calibration.tokens} tokens of ${s.calibration.name}, on the ${s.calibration.device.toUpperCase()}`],
    ['profile', 'Profile', prof],
    ['time', 'Time', `${(ms / 1000).toFixed(1)} s in all (projections ${s.seconds.toFixed(1)} s)`],
  ]);
  const table = $('cmp-summary');
  table.dataset.fileBytes = String(s.file_bytes);
  table.dataset.originalBytes = String(s.original_file_bytes);
  table.dataset.allocation = s.policy.allocation;
  const notes = [...s.messages, ...s.notes];
  $('cmp-notes').replaceChildren(...notes.map((n) => { const li = document.createElement('li'); li.textContent = n; return li; }));
  $('cmp-notes').hidden = !notes.length;
  $('cmp-status').textContent = `Compressed in ${(ms / 1000).toFixed(1)} s; loading ${name} as the model…`;
  delete $('cmp-status').dataset.stage;
  await loadBytes(r.bytes, name, 'derived');
  if (!model || !model.compressed) {
    $('cmp-status').textContent = `Compressed in ${(ms / 1000).toFixed(1)} s, but loading it failed (see Model above); ` +
      'the file can still be downloaded.';
    return;
  }
  $('cmp-status').textContent = `Compressed in ${(ms / 1000).toFixed(1)} s: ${name} is now the loaded model ` +
    '(tuning, evaluation and chat use it; compress-then-tune and edge mode tune it).';
  $('cmp-status').dataset.done = 'true';
}

/// A model was loaded: where its original comes from, and whether earlier results hold.
function compressModelLoaded(origin) {
  if (origin === 'derived') return;  // the compressed model made here: keep its original
  cmp.original = model && !model.compressed ? origin : null;
  cmp.summary = null;
  cmp.profile = null;
  cmp.file = null;
  $('cmp-summary').hidden = true;
  $('cmp-layers').hidden = true;
  $('cmp-notes').hidden = true;
  if (model && model.compressed) {
    $('cmp-status').textContent = 'This model is already compressed' +
      `${modelInfo?.policy ? ` (${modelInfo.policy.allocation} policy)` : ''}; load the original to compress it again.`;
  }
  checkPolicyFile();
  updateCompressControls();
}

/// Checks the picked policy file against the loaded model (the library's validation).
function checkPolicyFile() {
  const st = $('cmp-policy-status');
  $('cmp-policy-clear').hidden = !cmp.policy;
  if (!cmp.policy) { st.hidden = true; return true; }
  st.hidden = false;
  if (!model) return false;
  try {
    const p = model.checkPolicy(cmp.policy.text);
    st.textContent = `Policy ${cmp.policy.name}: ${p.layers.length} blocks, ${p.prune} ${p.pattern} pruning, ` +
      `${p.quant} quantization; it overrides the sparsity, bits, allocation and methods above.`;
    st.classList.add('ok');
    showError('cmp-error', '');
    return true;
  } catch (e) {
    st.textContent = `Policy ${cmp.policy.name} cannot be used.`;
    st.classList.remove('ok');
    showError('cmp-error', `${cmp.policy.name}: ${messageOf(e)}\nFix the file, or clear it to use the settings above. ` +
      'Nothing was changed.');
    return false;
  }
}

async function onPolicyFile(e) {
  const file = e.target.files[0];
  if (!file) return;
  try {
    cmp.policy = { name: file.name, text: await file.text() };
  } catch (err) {
    cmp.policy = null;
    showError('cmp-error', `Could not read ${file.name}: ${messageOf(err)}`);
    return;
  }
  checkPolicyFile();
}

function onPolicyClear() {
  cmp.policy = null;
  $('cmp-policy').value = '';
  showError('cmp-error', '');
  checkPolicyFile();
}

function onCompressDownload() {
  if (!cmp.file) return;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(cmp.file.blob);
  a.download = cmp.file.name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}

function setupCompress() {
  $('cmp-profile').addEventListener('click', () => runCompressJob('profile'));
  $('cmp-run').addEventListener('click', () => runCompressJob('compress'));
  $('cmp-cancel').addEventListener('click', onCompressCancel);
  $('cmp-download').addEventListener('click', onCompressDownload);
  $('cmp-policy').addEventListener('change', onPolicyFile);
  $('cmp-policy-clear').addEventListener('click', onPolicyClear);
  updateCompressControls();
}

// ---------------------------------------------------------------- run report

/// Everything the page has at this moment, as `runReport` (edge-llm.js) assembles it.
function buildReport() {
  const run = tune.run;
  const history = tune.history;
  const windowsOf = tune.plan?.windows;
  const tuning = run ? {
    options: run.options,
    mode: run.options.mode ?? 'vanilla',
    device: tune.device,
    state: tune.state,
    steps: tune.step,
    total_steps: tune.total,
    save_every: run.save_every,
    losses: history.train.map(([step, loss, window]) => ({ step, loss, window: window ?? null })),
    validation: history.val.map(([step, loss]) => ({ step, loss })),
    windows: windowsOf ?? null,
    exits: tune.plan?.exits ?? [],
    window_schedule: tune.plan?.window_schedule ?? null,
    plan: tune.plan,
    seconds: elapsedMs() / 1000,
    tokens_per_s: tune.speeds.length ? tune.speeds.reduce((a, [, t]) => a + t, 0) / tune.speeds.length : null,
    step_timings: tune.speeds.map(([step, tps, ms]) => ({ step, tokens_per_s: tps, ms })),
    model: run.model,
  } : null;
  const data = run ? {
    name: run.data.name, kind: run.data.kind, source: run.data.source,
    bytes: run.data.text ? run.data.text.length : undefined,
    stats: tune.dataInfo?.stats ?? null, records: tune.dataInfo?.records ?? null,
  } : null;
  return wasm.runReport({
    model: modelInfo ? {
      name: modelInfo.name, file_bytes: modelInfo.bytes, config: modelInfo.config,
      compressed: modelInfo.compressed, policy: modelInfo.policy,
      compressed_from: modelInfo.compressed && cmp.summary ? cmp.original?.name ?? null : null,
    } : null,
    compression: cmp.summary,
    data,
    tuning,
    evaluation: evalState.results,
    gpu: gpuDescription,
  });
}

function onReport() {
  let report;
  try {
    report = buildReport();
  } catch (e) {
    $('report-status').textContent = `The report could not be made: ${messageOf(e)}`;
    return;
  }
  const blob = new Blob([JSON.stringify(report, null, 2)], { type: 'application/json' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'edge-llm-run-report.json';
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  $('report-status').textContent = `edge-llm-run-report.json (${kib(blob.size)}): model ${report.model?.name ?? '—'}` +
    `${report.tuning ? `, ${report.tuning.steps} tuning steps` : ''}${report.compression ? ', compression' : ''}.`;
}

// ---------------------------------------------------------------- start

async function main() {
  try {
    wasm = await import('./edge-llm.js');
    await wasm.init();
  } catch (e) {
    const msg = `The WebAssembly module did not load (${messageOf(e)}). Build it with ` +
      'scripts/build-wasm.sh (scripts/run.sh does this) and reload.';
    showError('gpu-error', msg);
    showError('model-error', msg);
    $('gpu-status').textContent = $('model-status').textContent = 'Not started.';
    return;
  }
  let timer = 0;
  $('prompt').addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(tokenize, 120); });
  $('chatml').addEventListener('change', tokenize);
  $('model-file').addEventListener('change', loadPicked);
  for (const id of ['opt-seq', 'opt-exit-stride', 'opt-partial']) {
    $(id).addEventListener('input', () => { $(id).dataset.touched = 'true'; });
  }
  setupTuning();
  setupEval();
  setupCompress();
  $('report-download').addEventListener('click', onReport);
  await Promise.all([showGpu(), loadDefault(), tuneWorkerReady]);
  document.body.dataset.ready = 'true';
}

main();
