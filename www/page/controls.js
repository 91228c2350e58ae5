// Which controls each section allows, from the shared state: a tuning run, an evaluation
// and a compression exclude one another.

import { $, showError } from './ui.js';
import { model, tune, cmp, evalState, BUSY, WORKING } from './state.js';

/// The run's state: the tune section's buttons, then every other section's that depend on it.
export function setTuneState(state) {
  tune.state = state;
  document.body.dataset.tuneState = state;
  const busy = BUSY.includes(state);
  $('data-box').disabled = busy;
  $('settings-box').disabled = busy;
  // A compression ends by loading its model into the worker: no run starts meanwhile.
  $('tune-start').disabled = busy || !tune.ready || !model || cmp.state === 'running';
  $('tune-pause').disabled = state !== 'running';
  $('tune-resume').disabled = state !== 'paused';
  $('tune-cancel').disabled = !(state === 'running' || state === 'paused');
  $('tune-download').disabled = !((tune.created && (state === 'paused' || state === 'done')) ||
    (tune.keptId !== null && !WORKING.includes(state)));
  $('resume-saved').disabled = busy || !model;
  // The estimate's smaller settings apply to the next run, not to one that is going.
  if ($('use-suggested')) $('use-suggested').disabled = busy;
  updateEvalControls();
  updateCompressControls();
}

export function showTuneError(message) {
  showError('tune-error', message);
}

export function updateEvalControls() {
  const tuningBusy = WORKING.includes(tune.state);
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

export function updateCompressControls() {
  const tuningBusy = BUSY.includes(tune.state);
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
