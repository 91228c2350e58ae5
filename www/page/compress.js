// The compress section: profiling and LUC compression of the loaded model in a worker of its
// own (CPU work that blocks its worker until it ends, so Cancel terminates that worker and the
// tuning worker keeps everything), the per-block table, and the compressed model loaded in
// place of the original.

import { $, showError, messageOf, mib, fillTable, clock } from './ui.js';
import { model, modelInfo, tune, cmp, BUSY } from './state.js';
import { workerClient } from './worker-client.js';
import { setTuneState, updateCompressControls } from './controls.js';
import { dataSource, currentData, builtinData } from './settings.js';
import { loadBytes } from './model.js';

const STAGE_LABELS = {
  calibrate: 'Calibrating (one forward per row)',
  fisher: 'Fisher estimate (one backward per row)',
  profile: 'Profiling each block at every sparsity and width',
  compress: 'Compressing the projections',
};

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
  if (BUSY.includes(tune.state)) {
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
  const job = workerClient({
    onEvent: onCompressEvent,
    onError: (e) => job.failPending(
      new Error(`the compression worker failed: ${e.message || 'see the browser console'}`)),
  });
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
    `${p.profile.base_loss === null ? ' (here: the output error, no loss rows)' : ''}; LUC spares the most sensitive blocks.` +
    (p.expected_gain_summary ? ` At the mean sparsity and bits set for compression: ${p.expected_gain_summary}.` : '');
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
export function compressModelLoaded(origin) {
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

export function setupCompress() {
  $('cmp-profile').addEventListener('click', () => runCompressJob('profile'));
  $('cmp-run').addEventListener('click', () => runCompressJob('compress'));
  $('cmp-cancel').addEventListener('click', onCompressCancel);
  $('cmp-download').addEventListener('click', onCompressDownload);
  $('cmp-policy').addEventListener('change', onPolicyFile);
  $('cmp-policy-clear').addEventListener('click', onPolicyClear);
  updateCompressControls();
}
