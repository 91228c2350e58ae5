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
let modelInfo = null;  // {name, bytes, config} of the loaded model

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

async function loadBytes(bytes, name) {
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
  fillTable($('config-table'), rows);
  status.textContent = `Loaded ${name}.`;
  status.classList.add('ok');
  $('prompt').disabled = false;
  tokenize();
  modelInfo = { name, bytes: bytes.length, config };
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
  await loadBytes(bytes, DEFAULT_MODEL);
}

async function loadPicked(event) {
  const file = event.target.files[0];
  if (!file) return;
  if (['starting', 'running', 'pausing', 'paused'].includes(tune.state)) {
    showError('model-error', 'A tuning run is in progress: cancel it before loading another model.');
    return;
  }
  $('model-progress').hidden = true;
  const bytes = new Uint8Array(await file.arrayBuffer());
  await loadBytes(bytes, file.name);
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
  device: 'gpu',       // where the run trains: 'gpu', or 'cpu' for windowed modes
  history: { train: [], val: [] },
  elapsedMs: 0,        // training time of earlier sessions of this run
  sessionStart: 0,
  sessionSteps: 0,
  sessionMs: 0,
  lastTokensPerS: 0,
  file: null,          // {name, text} of the user's data file
  builtinText: {},
  checkSeq: 0,
};

// For the browser console and the page test: the run's state, loss history included.
window.edgeLlmTune = tune;

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
  $('tune-start').disabled = busy || !tune.ready || !model;
  $('tune-pause').disabled = state !== 'running';
  $('tune-resume').disabled = state !== 'paused';
  $('tune-cancel').disabled = !(state === 'running' || state === 'paused');
  $('tune-download').disabled = !(tune.created && (state === 'paused' || state === 'done'));
  $('resume-saved').disabled = busy || !model;
  updateEvalControls();
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
    note = 'Edge and partial modes run on the CPU in this tab: the GPU engine does not run layer windows yet ' +
      '(slower than the GPU; the plan below is what a window would need on the GPU).';
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
  return `window ${index + 1} (${blocks}, ${w.exit_after === null ? 'model head' : `exit after ${w.exit_after}`})`;
}

function showPlan(plan) {
  const cpu = plan.device === 'cpu';
  const rows = [
    ['total', cpu ? 'GPU memory a window would need (plan only)' : 'GPU memory planned', kib(plan.total_bytes)],
    ...plan.by_category.map((c) => [`cat-${c.category}`, `· ${c.category.replace('_', ' ')}`, kib(c.bytes)]),
    ['budget', 'Budget', plan.budget_bytes ? mib(plan.budget_bytes) : 'none (device limits only)'],
    ['changes', 'To fit', plan.changes.length ? plan.changes.join(', ') : 'nothing changed'],
    ['largest', 'Largest buffer', `${plan.largest[0]?.name} (${kib(plan.largest[0]?.bytes ?? 0)}; binding limit ${mib(plan.max_storage_buffer_binding_size)})`],
    ['device', 'Runs on', cpu
      ? 'the CPU in this tab (the GPU engine does not run layer windows yet)'
      : 'the GPU'],
  ];
  if (cpu) {
    // No budget is fitted for a run on the CPU.
    rows.splice(0, rows.length, ...rows.filter(([key]) => key !== 'budget' && key !== 'changes'));
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
    if (plan.device === 'cpu') {
      $('plan-status').textContent = `Plan only: the largest window would need ${kib(plan.total_bytes)} of GPU ` +
        'memory, but this run trains on the CPU in this tab (the GPU engine does not run layer windows yet)' +
        `${options.memory_budget ? '; the memory budget applies to GPU runs' : ''}.`;
    } else {
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
    $('plan-status').textContent = memory ? 'This run does not fit.' : 'These settings cannot run.';
    showError('plan-error', memory
      ? `${msg}\nRaise the memory budget (or leave it empty), or lower the sequence length or the LoRA rank.`
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
  if (tune.lastTokensPerS) parts.push(`${Math.round(tune.lastTokensPerS)} tokens/s`);
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
  if (tune.device === 'cpu') {
    $('tune-gpu').textContent = 'Training on the CPU in this tab (edge and partial modes: the GPU engine does ' +
      'not run layer windows yet); no GPU memory is held by the trainer.';
    $('tune-gpu').dataset.bytes = '0';
    $('tune-gpu').dataset.device = 'cpu';
    return;
  }
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
  $('plan-status').textContent = made.device === 'cpu'
    ? `This run trains on the CPU in this tab; a window would need ${kib(made.plan.total_bytes)} of GPU memory (plan).`
    : `This run holds ${kib(made.plan.allocated_bytes)} of GPU memory.`;
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
const evalState = { busy: false, mcQuestions: null, validationText: null, pieces: 0 };

const evalSource = () => document.querySelector('input[name=eval-source]:checked').value;

const SOURCE_LABELS = { base: 'base model', tuned: 'tuned adapter', file: 'adapter from disk' };

function updateEvalControls() {
  const tuningBusy = ['starting', 'running', 'pausing'].includes(tune.state);
  const tunedRadio = document.querySelector('input[name=eval-source][value=tuned]');
  tunedRadio.disabled = !(tune.created && ['paused', 'done'].includes(tune.state));
  if (tunedRadio.disabled && tunedRadio.checked) {
    document.querySelector('input[name=eval-source][value=base]').checked = true;
  }
  const off = !model || !tune.worker || evalState.busy || tuningBusy;
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
    parts.push(` Its early exits (after blocks ${info.lm_exits.join(', ')}) run on the CPU in this tab: accuracy and ` +
      'chat vote over them; perplexity uses the GPU model (the exits are not applied there).');
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
    const voted = r.vote ? ` voted by ${r.vote} over exits after blocks ${r.exits.map((e) => e.after).join(', ')} (CPU)` : '';
    $('mc-status').textContent = `${SOURCE_LABELS[source]}${voted}: accuracy ${r.accuracy.toFixed(3)} ` +
      `(${r.correct} of ${r.n} right, ${r.seconds.toFixed(1)} s; chance is about 0.25)`;
    $('mc-status').dataset.accuracy = String(r.accuracy);
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
      `${r.prefill_seconds.toFixed(2)} s)${r.vote ? `, sampled from the exits' distributions voted by ${r.vote} on the CPU` : ''}.`;
    st.dataset.vote = r.vote ?? '';
    st.dataset.tokens = String(r.tokens);
    st.dataset.tokensPerS = String(r.tokens_per_s);
    st.dataset.decodeTokensPerS = String(r.decode_tokens_per_s);
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
  await Promise.all([showGpu(), loadDefault(), tuneWorkerReady]);
  document.body.dataset.ready = 'true';
}

main();
