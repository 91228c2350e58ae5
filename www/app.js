// The page: WebGPU adapter info, the model (default or picked from disk) and its
// configuration, and the prompt tokenized live. All work happens in ./pkg/edge_llm.js
// (the Rust crate compiled to WebAssembly by scripts/build-wasm.sh).

const $ = (id) => document.getElementById(id);

const DEFAULT_MODEL = 'models/default.gguf';

let wasm = null;   // the wasm-bindgen module, once initialised
let model = null;  // the loaded WebModel

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
    const info = JSON.parse(await wasm.gpu_info());
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
    model = wasm.load_model(bytes);
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
  const config = JSON.parse(model.config_json());
  const rows = Object.entries(config).map(([k, v]) => [k, CONFIG_LABELS[k] ?? k, v]);
  rows.push(['file_size', 'File size', mib(model.file_bytes())]);
  fillTable($('config-table'), rows);
  status.textContent = `Loaded ${name}.`;
  status.classList.add('ok');
  $('prompt').disabled = false;
  tokenize();
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
    const text = $('chatml').checked ? model.chat_prompt(user) : user;
    const ids = Array.from(model.tokenize(text));
    const strings = model.token_strings(Uint32Array.from(ids));
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

// ---------------------------------------------------------------- start

async function main() {
  try {
    wasm = await import('./pkg/edge_llm.js');
    await wasm.default();
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
  await Promise.all([showGpu(), loadDefault()]);
  document.body.dataset.ready = 'true';
}

main();
