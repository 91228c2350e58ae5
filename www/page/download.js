// The download step: the adapter of this page's run (one zip of the PEFT files and the
// exits), and the finished adapters kept in browser storage until downloaded or discarded,
// so that a new run, another model or a reload loses none of them.

import { $, showError, messageOf, kib, plain } from './ui.js';
import { wasm, modelInfo, tune, call } from './state.js';
import { setTuneState } from './controls.js';
import { keptAdapters, keepAdapter, settleAdapter } from './storage.js';

/// The adapter's one download (the PEFT files and the exits).
const ADAPTER_ZIP = 'edge-llm-adapter.zip';

const link = (name, blob) => {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.textContent = `${name} (${kib(blob.size)})`;
  return a;
};

/// Saves `files` ({safetensors, config, exits, zip}) as one zip, with the files one by one
/// as links.
function saveFiles(files) {
  const named = [
    ['adapter_model.safetensors', new Blob([files.safetensors], { type: 'application/octet-stream' })],
    ['adapter_config.json', new Blob([files.config], { type: 'application/json' })],
  ];
  if (files.exits) named.push(['exits.safetensors', new Blob([files.exits], { type: 'application/octet-stream' })]);
  // One download: the files in a zip, to unpack into the directory PEFT and edge-llm read.
  const zip = link(ADAPTER_ZIP, new Blob([files.zip], { type: 'application/zip' }));
  const links = named.map(([name, blob]) => link(name, blob));
  const box = $('adapter-links');
  box.replaceChildren('Downloaded ', zip, ': unpack it into a folder and load it with ',
    'peft.PeftModel.from_pretrained(model, folder) or edge-llm --adapter folder. The files one by one: ',
    ...links.flatMap((a, i) => (i ? [', ', a] : [a])),
    files.exits ? ' (exits.safetensors holds the early exits, which PEFT has not; edge-llm reads them).' : '.');
  box.hidden = false;
  zip.click();
}

/// The base model id the user gave (trimmed; null for none), checked by the engine's rule
/// (`checkBaseModel`): a wrong one is outlined, its reason under the field, and throws.
async function baseModel() {
  const input = $('base-model');
  const id = input.value.trim();
  let message = '';
  if (id) {
    try { await wasm.checkBaseModel(id); } catch (e) { message = plain(messageOf(e)); }
  }
  input.classList.toggle('invalid', !!message);
  if (message) input.setAttribute('aria-invalid', 'true'); else input.removeAttribute('aria-invalid');
  showError('base-model-error', message);
  if (message) {
    $('download-advanced').open = true;
    const e = new Error(message);
    e.field = 'base-model';
    throw e;
  }
  return id || null;
}

/// Says what the adapter names as its base when the field is empty (the loaded model's
/// Hugging Face id when the file is recognised, else its own name, which loaders cannot
/// resolve).
export function showBaseModelNote() {
  const note = $('base-model-note');
  if (!modelInfo) return;
  $('base-model').placeholder = modelInfo.hfId ?? 'owner/name';
  note.textContent = modelInfo.hfId
    ? `Empty: ${modelInfo.hfId}, recognised from the model file. Loaders such as PEFT's fetch the base ` +
      'model by this id.'
    : 'Empty: the model file\'s own name, which Hugging Face\'s loaders cannot find. Give the id of the ' +
      'model it was converted from (as on huggingface.co) for PEFT to load the adapter.';
}

/// A kept adapter's files, naming `id` as the base model when one is given (read back for
/// the loaded model and exported again by the engine, as the run's own adapter is).
async function withBase(files, id) {
  if (!id) return files;
  try {
    return await call('reexportAdapter', { ...files, base_model: id });
  } catch (e) {
    throw new Error(`${plain(messageOf(e)).replace(/\.?$/, '.')} An adapter kept from another model gets its ` +
      'base model id only while that model is loaded: load it, or clear the field to download the adapter as kept.');
  }
}

/// Shows a download's error: a wrong base model id under its field, anything else in `box`.
function downloadError(box, e) {
  if (e.field !== 'base-model') showError(box, `The adapter could not be exported: ${messageOf(e)}`);
}

/// "Download adapter": the run's adapter, from the worker while it holds the run, else as
/// kept when the run finished; named after the base model id given, if any. Resolves to
/// whether it was downloaded.
export async function onDownload() {
  showError('tune-error', '');
  let files = null;
  try {
    const id = await baseModel();
    if (tune.created && (tune.state === 'paused' || (id && tune.state === 'done'))) {
      files = await call('adapter', { base_model: id });
    } else if (tune.keptId !== null) {
      files = (await keptAdapters()).find((a) => a.id === tune.keptId)?.files ?? null;
      if (!files && tune.created) files = await call('adapter', { base_model: id });
      else if (files) files = await withBase(files, id);
    } else {
      files = await call('adapter', { base_model: id });
    }
    if (!files) throw new Error('it is no longer stored in this browser');
  } catch (e) {
    downloadError('tune-error', e);
    return false;
  }
  saveFiles(files);
  if (tune.keptId !== null && tune.state !== 'paused') {
    await settleAdapter(tune.keptId, 'downloaded').catch(() => {});
  }
  return true;
}

/// This run's finished adapter when it is kept and not downloaded (a new run asks first).
export async function undownloadedAdapter() {
  if (tune.keptId === null) return null;
  return (await keptAdapters()).find((a) => a.id === tune.keptId && !a.downloaded) ?? null;
}

/// Discards this run's kept adapter (the user chose to, before a new run).
export async function discardFinishedAdapter() {
  if (tune.keptId !== null) await settleAdapter(tune.keptId, 'discard').catch(() => {});
  tune.keptId = null;
  delete document.body.dataset.keptAdapter;
}

/// A finished run: its adapter goes to browser storage at once, so that nothing the user
/// does next (another model, a new run, a reload) loses it before it is downloaded.
export async function keepFinishedAdapter() {
  let files;
  try {
    files = await call('adapter');
  } catch (e) {
    showError('tune-error', `The finished adapter could not be read out for keeping: ${messageOf(e)}. ` +
      'Download it now.');
    return;
  }
  const id = Date.now();
  try {
    await keepAdapter({
      id,
      savedAt: id,
      model: tune.run?.model?.label ?? modelInfo?.label ?? '',
      data: tune.run?.data?.name ?? '',
      steps: tune.step,
      files,
      downloaded: false,
    });
  } catch (e) {
    showError('tune-error', `This browser could not keep the finished adapter (${messageOf(e)}): ` +
      'download it before starting another run or loading another model.');
    return;
  }
  tune.keptId = id;
  document.body.dataset.keptAdapter = String(id);
  setTuneState(tune.state);
  await showKeptAdapters();
}

/// Lists the kept adapters not yet downloaded, other than this run's own (its button is
/// "Download adapter"), each with Download and Discard.
export async function showKeptAdapters() {
  const list = (await keptAdapters()).filter((a) => !a.downloaded && a.id !== tune.keptId);
  const items = list.map((a) => {
    const li = document.createElement('li');
    li.dataset.id = String(a.id);
    const when = new Date(a.savedAt).toLocaleString();
    li.append(`Tuned on ${a.data || 'your data'} (${a.steps} steps${a.model ? `, ${a.model}` : ''}), finished ${when}.`);
    const get = document.createElement('button');
    get.type = 'button';
    get.className = 'kept-download';
    get.textContent = 'Download';
    get.addEventListener('click', async () => {
      showError('tune-error', '');
      let files;
      try { files = await withBase(a.files, await baseModel()); } catch (e) { downloadError('tune-error', e); return; }
      saveFiles(files);
      await settleAdapter(a.id, 'downloaded').catch(() => {});
      await showKeptAdapters();
    });
    const drop = document.createElement('button');
    drop.type = 'button';
    drop.className = 'secondary kept-discard';
    drop.textContent = 'Discard';
    drop.addEventListener('click', async () => {
      await settleAdapter(a.id, 'discard').catch(() => {});
      await showKeptAdapters();
    });
    li.append(get, drop);
    return li;
  });
  $('kept-list').replaceChildren(...items);
  $('kept-adapters').hidden = !items.length;
}

/// The base model field checks itself as it is typed (the engine's rule, the page's words).
export function setupDownload() {
  $('base-model').addEventListener('input', () => baseModel().catch(() => {}));
}
