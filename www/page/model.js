// The model section: the default model (fetched with progress) or a .gguf picked from disk,
// named by what it is, and its configuration. A file that does not load leaves the loaded
// model (and everything made with it) as it was. The other sections hear of each loaded
// model through `onModelLoaded`.

import { $, showError, messageOf, mib, megabytes, fillTable, nextFrame } from './ui.js';
import { wasm, model, modelInfo, setModel, setModelInfo, tune, cmp, BUSY } from './state.js';
import { setTuneState } from './controls.js';

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
/// What a model is, in people's words: `{label, hfId}`, e.g. "SmolLM2-135M-Instruct
/// (Q4_1, 98 MB)" for the default model (recognised by its file's sha256).
function describe(m, fileName) {
  let id = {};
  try { id = m.identity; } catch { /* a name is all the label needs */ }
  const what = id.hf_id ? id.hf_id.split('/').pop() : (id.name || fileName.split('/').pop());
  const detail = [m.compressed ? 'compressed' : id.weights, megabytes(m.fileBytes)].filter(Boolean).join(', ');
  return { label: `${what} (${detail})`, hfId: id.hf_id ?? null };
}

/// Loads `bytes` as the page's model. `origin` ({name, load}) says where the uncompressed
/// original comes from (compression reads it again); 'derived' keeps the current one (the
/// model was compressed from it here). A file that does not load changes nothing: the
/// model loaded before stays, with its runs and adapters. Returns whether it loaded.
export async function loadBytes(bytes, name, origin = null) {
  const status = $('model-status');
  const before = { text: status.textContent, ok: status.classList.contains('ok') };
  status.classList.remove('ok');
  status.textContent = `Reading ${name} (${mib(bytes.length)})…`;
  showError('model-error', '');
  await nextFrame();
  let next;
  try {
    next = await wasm.loadModel(bytes);
  } catch (e) {
    status.textContent = model ? before.text : 'No model loaded.';
    status.classList.toggle('ok', Boolean(model) && before.ok);
    showError('model-error',
      `Could not load ${name}: ${messageOf(e)}\n${model
        ? `The model loaded before, ${modelInfo.label}, is still the one in use.`
        : 'Pick the GGUF file of a LLaMA-family model (for example SmolLM2-135M-Instruct, Q4_1, Q8_0, F16 or F32).'}`);
    setTuneState(tune.state);
    return false;
  }
  if (model) model.free();
  setModel(next);
  const config = model.config;
  const { label, hfId } = describe(model, name);
  const rows = [];
  if (hfId) rows.push(['hf_id', 'Hugging Face model', hfId]);
  rows.push(['file', 'File', name]);
  rows.push(...Object.entries(config).map(([k, v]) => [k, CONFIG_LABELS[k] ?? k, v]));
  rows.push(['file_size', 'File size', mib(model.fileBytes)]);
  if (model.compressed) {
    let policy = null;
    try { policy = model.policy; } catch { /* shown when the file is used */ }
    rows.push(['compressed', 'Compressed', policy
      ? `yes: ${policy.allocation} policy, ${policy.prune} ${policy.pattern} pruning, ${policy.quant}`
      : 'yes']);
  }
  fillTable($('config-table'), rows);
  $('model-progress').hidden = true;
  status.textContent = `Loaded ${label}.`;
  status.classList.add('ok');
  status.dataset.file = name;
  $('prompt').disabled = false;
  let policy = null;
  try { policy = model.policy; } catch { /* a damaged policy shows when the file is used */ }
  setModelInfo({ name, label, hfId, bytes: bytes.length, config, compressed: model.compressed, policy });
  $('config-table').dataset.compressed = String(model.compressed);
  $('config-table').dataset.name = name;
  await loaded(bytes, origin);
  return true;
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
  if (BUSY.includes(tune.state)) {
    showError('model-error', 'A tuning run is in progress: cancel it (or let it finish) before loading another model.');
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
