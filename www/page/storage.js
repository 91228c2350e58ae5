// What survives a reload, in IndexedDB: the saved run (its checkpoints), and finished
// adapters not yet downloaded, kept until the user downloads or discards them (a new run, a
// new model or a reload does not lose them).

import { $, messageOf } from './ui.js';
import { tune, elapsedMs } from './state.js';
import { showTuneError } from './controls.js';

export const RUN_KEY = 'current';

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

export const idbGet = (key) => idb('readonly', (s) => s.get(key));
export const idbPut = (key, value) => idb('readwrite', (s) => s.put(value, key));
export const idbDelete = (key) => idb('readwrite', (s) => s.delete(key));

export async function saveRun(checkpoint, step, done) {
  const record = {
    version: 1,
    savedAt: Date.now(),
    ...tune.run,
    step,
    total: tune.total,
    done,
    elapsedMs: elapsedMs(),
    // A copy up to the checkpoint's step, taken now: IndexedDB clones the record only once
    // the store is open, and later steps' losses arrive meanwhile.
    history: {
      train: tune.history.train.filter((p) => p[0] <= step),
      val: tune.history.val.filter((p) => p[0] <= step),
    },
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

/// Offers the saved run (and returns its record, or null).
export async function showSavedRun() {
  let rec = null;
  try { rec = await idbGet(RUN_KEY); } catch { /* no storage: nothing to offer */ }
  const box = $('saved-run');
  if (!rec || tune.created) { box.hidden = true; return null; }
  const when = new Date(rec.savedAt).toLocaleString();
  const what = rec.done ? 'A finished run' : 'A saved run';
  $('saved-run-text').textContent =
    `${what} is stored in this browser: step ${rec.step} of ${rec.total} on ${rec.data.name}, ` +
    `model ${rec.model.name}, saved ${when}.`;
  box.hidden = false;
  return rec;
}

// ------------------------------------------------ finished adapters

const ADAPTERS_KEY = 'adapters';

/// The kept adapters: [{id, savedAt, model, data, steps, files, downloaded}].
export async function keptAdapters() {
  try { return (await idbGet(ADAPTERS_KEY)) ?? []; } catch { return []; }
}

/// Keeps a finished run's adapter files; the ones already downloaded make room.
export async function keepAdapter(rec) {
  const list = (await keptAdapters()).filter((a) => !a.downloaded);
  list.push(rec);
  await idbPut(ADAPTERS_KEY, list);
}

/// Marks a kept adapter downloaded (it goes when the next one is kept), or discards it.
export async function settleAdapter(id, how) {
  const list = await keptAdapters();
  const next = how === 'discard' ? list.filter((a) => a.id !== id)
    : list.map((a) => (a.id === id ? { ...a, downloaded: true } : a));
  await idbPut(ADAPTERS_KEY, next);
}
