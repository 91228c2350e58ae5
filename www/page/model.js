// The model section: the default model (fetched with progress) or a .gguf picked from disk,
// and its configuration. The other sections hear of each loaded model through
// `onModelLoaded`.

import { $, showError, messageOf, mib, fillTable, nextFrame } from './ui.js';
import { wasm, model, setModel, setModelInfo, tune, cmp } from './state.js';

// `?model=models/tiny.gguf` serves another model beside the page (tests use the tiny one).
const DEFAULT_MODEL = new URLSearchParams(location.search).get('model') || 'models/default.gguf';

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

let loaded = async () => {};

/// What the other sections do with a newly loaded model: `fn(bytes, origin)`, awaited by
/// `loadBytes` (set once, by app.js).
export function onModelLoaded(fn) {
  loaded = fn;
}

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
export async function loadBytes(bytes, name, origin = null) {
  const status = $('model-status');
  status.classList.remove('ok');
  status.textContent = `Reading ${name} (${mib(bytes.length)})…`;
  showError('model-error', '');
  await nextFrame();
  try {
    if (model) { model.free(); setModel(null); }
    setModel(await wasm.loadModel(bytes));
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
  let policy = null;
  try { policy = model.policy; } catch { /* a damaged policy shows when the file is used */ }
  setModelInfo({ name, bytes: bytes.length, config, compressed: model.compressed, policy });
  $('config-table').dataset.compressed = String(model.compressed);
  $('config-table').dataset.name = name;
  await loaded(bytes, origin);
}

export async function loadDefault() {
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

export async function loadPicked(event) {
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
