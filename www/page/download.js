// The download step: the adapter of this page's run (one zip of the PEFT files and the
// exits), and the finished adapters kept in browser storage until downloaded or discarded,
// so that a new run, another model or a reload loses none of them.

import { $, showError, messageOf, kib } from './ui.js';
import { modelInfo, tune, call } from './state.js';
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

/// "Download adapter": the run's adapter, from the worker while it holds the run, else as
/// kept when the run finished.
export async function onDownload() {
  showError('tune-error', '');
  let files = null;
  try {
    if (tune.created && tune.state === 'paused') {
      files = await call('adapter');
    } else if (tune.keptId !== null) {
      files = (await keptAdapters()).find((a) => a.id === tune.keptId)?.files ?? null;
      if (!files && tune.created) files = await call('adapter');
    } else {
      files = await call('adapter');
    }
    if (!files) throw new Error('it is no longer stored in this browser');
  } catch (e) {
    showError('tune-error', `The adapter could not be exported: ${messageOf(e)}`);
    return;
  }
  saveFiles(files);
  if (tune.keptId !== null && tune.state !== 'paused') {
    await settleAdapter(tune.keptId, 'downloaded').catch(() => {});
  }
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
      saveFiles(a.files);
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
