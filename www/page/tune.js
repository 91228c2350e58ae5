// The tune section's runs: start, pause, resume, cancel (said at once) and resume a saved
// run (its settings shown in the form as soon as the page offers it), and the worker's
// training events ('finishing' after the last step, 'done' only once the run has ended, its
// adapter then kept in browser storage by download.js).

import { $, showError, messageOf, kib, nextFrame } from './ui.js';
import { modelInfo, tune, call, elapsedMs } from './state.js';
import { workerClient } from './worker-client.js';
import { setTuneState, showTuneError } from './controls.js';
import { RUN_KEY, idbGet, idbDelete, saveRun, showSavedRun } from './storage.js';
import {
  currentData, showDataInfo, readOptions, updateModeControls, writeOptions, showPlan, planStatus, scheduleCheck, checkSettings,
  setCpuThreads,
} from './settings.js';
import { showProgress, drawPlot, showGpuBytes } from './plot.js';
import { onEvalEvent, evalModelLoaded } from './eval.js';
import {
  onDownload, keepFinishedAdapter, showKeptAdapters, showBaseModelNote, setupDownload, undownloadedAdapter,
  discardFinishedAdapter,
} from './download.js';
import { clearEstimate } from './estimate.js';

async function startRun(run, checkpoint) {
  showTuneError('');
  $('start-confirm').hidden = true;
  $('adapter-links').hidden = true;
  setTuneState('starting');
  // This run's adapter is not the finished one kept before: that one stays in the list.
  tune.keptId = null;
  delete document.body.dataset.keptAdapter;
  await showKeptAdapters();
  // A speed probe waiting to start does not; one in the worker ends first (it holds a
  // trainer of its own).
  tune.checkSeq += 1;
  if ($('estimate').dataset.seconds === undefined) clearEstimate();
  if (tune.probing) await tune.probing;
  // The engine is the plan's (the worker decides the same way when it creates the run).
  const memory = $('plan-table').dataset.device === 'cpu' ? 'memory' : 'GPU memory';
  $('tune-status').textContent = checkpoint ? 'Preparing the data and resuming the saved run…'
    : `Preparing the data and allocating ${memory}…`;
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
  tune.deviceReason = made.device_reason;
  tune.total = made.total;
  tune.step = made.step;
  tune.sessionSteps = 0;
  tune.sessionMs = 0;
  showPlan(made.plan);
  $('plan-status').textContent = made.device === 'cpu'
    ? planStatus(made.plan)
    : `This run holds ${kib(made.plan.allocated_bytes)} of GPU memory.`;
  showError('plan-error', '');
  showDataInfo(made.data, run.data);
  showGpuBytes(made.plan.allocated_bytes);
  $('saved-run').hidden = true;
  drawPlot();
  if (made.step >= made.total) {
    selectTuned();
    setTuneState('done');
    showProgress();
    return;
  }
  await runOn();
}

/// Evaluation then uses the run's adapter.
function selectTuned() {
  const radio = document.querySelector('input[name=eval-source][value=tuned]');
  radio.disabled = false;
  radio.checked = true;
}

async function runOn() {
  tune.sessionStart = performance.now();
  setTuneState('running');
  showProgress();
  await call('run');
}

/// Start: when the finished run's adapter has not been downloaded, the user first chooses
/// what becomes of it (download, keep, discard: `onConfirm`).
async function onStart() {
  if (await undownloadedAdapter()) {
    $('start-confirm').hidden = false;
    $('confirm-download').focus();
    return;
  }
  await startNew();
}

async function onConfirm(choice) {
  $('start-confirm').hidden = true;
  if (choice === 'back') return;
  if (choice === 'download' && !(await onDownload())) return;
  if (choice === 'discard') await discardFinishedAdapter();
  await startNew();
}

async function startNew() {
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
    model: { name: modelInfo.name, bytes: modelInfo.bytes, label: modelInfo.label },
    data,
    options,
    save_every: saveEvery,
  }, null);
}

/// Fills the form with a saved run's settings and data, as it ran (after a reload the
/// page shows the run it offers, not the defaults). Returns the run's data.
async function fillFromSaved(rec) {
  writeOptions(rec.options, rec.save_every);
  let data = rec.data;
  if (data.source !== 'file') {
    document.querySelector(`input[name=data-source][value="${data.source}"]`).checked = true;
    data = await currentData();
  } else {
    document.querySelector('input[name=data-source][value="file"]').checked = true;
    tune.file = { name: data.name, text: data.text };
    $('data-kind').value = data.kind;
  }
  return data;
}

async function onResumeSaved() {
  showTuneError('');
  let rec;
  try { rec = await idbGet(RUN_KEY); } catch (e) { showTuneError(messageOf(e)); return; }
  if (!rec) { $('saved-run').hidden = true; return; }
  if (!modelInfo || rec.model.name !== modelInfo.name || rec.model.bytes !== modelInfo.bytes) {
    showTuneError(`The saved run was tuned on ${rec.model.label ?? rec.model.name}, but the page ` +
      `has ${modelInfo ? modelInfo.label : 'no model'} loaded. Load that model ` +
      '(pick the same .gguf file above), then resume.');
    return;
  }
  let data;
  try { data = await fillFromSaved(rec); } catch (e) { showTuneError(messageOf(e)); return; }
  tune.history = rec.history;
  tune.elapsedMs = rec.elapsedMs;
  tune.lastTokensPerS = 0;
  await startRun({ model: rec.model, data, options: rec.options, save_every: rec.save_every }, rec.checkpoint);
}

async function onDiscardSaved() {
  try { await idbDelete(RUN_KEY); } catch { /* nothing stored */ }
  $('saved-run').hidden = true;
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
      // The training time at the step's end: the plot's other x-axis.
      tune.history.train.push([r.step, r.loss, r.window ?? null, Math.round(elapsedMs())]);
      tune.speeds.push([r.step, r.tokens_per_s, r.step_ms]);
      if (r.val_loss !== null && r.val_loss !== undefined) tune.history.val.push([r.step, r.val_loss]);
      // After the last step the run still validates and saves: Pause has nothing to stop.
      if (r.step >= r.total_steps && ['running', 'pausing'].includes(tune.state)) setTuneState('finishing');
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
      selectTuned();
      setTuneState('done');
      await saveRun(m.checkpoint, m.step, true);
      showProgress();
      drawPlot();
      await keepFinishedAdapter();
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

export let tuneWorkerReady = Promise.resolve();

export function setupTuning() {
  setTuneState('idle');
  drawPlot();
  try {
    tune.worker = workerClient({
      onEvent: onWorkerEvent,
      onError: (e) => {
        setTuneState('error');
        showTuneError(`The tuning worker failed: ${e.message || 'see the browser console'}. Reload the page.`);
      },
    });
  } catch (e) {
    showTuneError(`The tuning worker could not start (${messageOf(e)}). Use a current Chrome or Edge.`);
    return;
  }
  // Without WebGPU in the worker the engine rule picks the CPU engine; the plan says so.
  tuneWorkerReady = call('init').then((r) => { setCpuThreads(r.cpu); }, (e) => {
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
  for (const choice of ['download', 'keep', 'discard', 'back']) {
    $(`confirm-${choice}`).addEventListener('click', () => onConfirm(choice));
  }
  $('tune-pause').addEventListener('click', async () => {
    setTuneState('pausing');
    showProgress();
    await call('pause');
  });
  $('tune-resume').addEventListener('click', runOn);
  $('tune-cancel').addEventListener('click', async () => {
    // Said at once: the worker stops after the step it is in.
    setTuneState('cancelling');
    showProgress();
    await call('cancel');
  });
  $('tune-download').addEventListener('click', onDownload);
  setupDownload();
  $('resume-saved').addEventListener('click', onResumeSaved);
  $('discard-saved').addEventListener('click', onDiscardSaved);
  window.addEventListener('resize', drawPlot);
  for (const r of document.querySelectorAll('input[name=plot-axis]')) r.addEventListener('change', drawPlot);
  setInterval(() => { if (['running', 'finishing'].includes(tune.state)) showProgress(); }, 1000);
}

/// A model was loaded on the page: the worker gets its own copy; small models default to
/// short rows.
export async function tuneModelLoaded(bytes) {
  await tuneWorkerReady;
  if (!tune.worker) return;
  tune.created = false;
  tune.ready = false;
  tune.probe = null;
  $('data-status').textContent = 'Getting the model ready for tuning…';
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
  const saved = await showSavedRun();
  // The form shows the run that is offered, as it ran.
  if (saved && saved.model.name === modelInfo.name && saved.model.bytes === modelInfo.bytes) {
    try { await fillFromSaved(saved); } catch { /* its data shows its own error when resumed */ }
  }
  await showKeptAdapters();
  showBaseModelNote();
  await checkSettings();
}
