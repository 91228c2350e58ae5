// The GPU memory plan: the data checked and memory planned for the current settings, as they
// change (nothing is allocated), and how the page names a plan's windows.

import { $, showError, messageOf, mib, kib, fillTable } from './ui.js';
import { model, tune, call } from './state.js';
import { setTuneState } from './controls.js';
import { currentData, showPreview, showDataInfo } from './data.js';
import { readOptions } from './options.js';

/// `window` of a plan as the page says it: 1-based blocks and the exit it is read at.
export function windowLabel(index, plan = tune.plan) {
  const w = plan?.windows?.[index];
  if (!w) return `window ${index + 1}`;
  const [a, b] = w.layers;
  const blocks = b - a === 1 ? `block ${b}` : `blocks ${a + 1}–${b}`;
  const lr = w.lr_scale != null && w.lr_scale !== 1 ? `, LR × ${w.lr_scale.toPrecision(2)}` : '';
  return `window ${index + 1} (${blocks}, ${w.exit_after === null ? 'model head' : `exit after ${w.exit_after}`}${lr})`;
}

export function showPlan(plan) {
  const windowed = plan.windows.length > 1 || plan.windows[0]?.layers[0] > 0;
  const rows = [
    ['total', 'GPU memory planned', kib(plan.total_bytes)],
    ...plan.by_category.map((c) => [`cat-${c.category}`, `· ${c.category.replace('_', ' ')}`, kib(c.bytes)]),
    ['budget', 'Budget', plan.budget_bytes ? mib(plan.budget_bytes) : 'none (device limits only)'],
    ['changes', 'To fit', plan.changes.length ? plan.changes.join(', ') : 'nothing changed'],
    ['largest', 'Largest buffer', `${plan.largest[0]?.name} (${kib(plan.largest[0]?.bytes ?? 0)}; binding limit ${mib(plan.max_storage_buffer_binding_size)})`],
    ['device', 'Runs on', 'the GPU'],
  ];
  if (windowed) {
    rows.push(['windows', 'Windows (trained in turn)',
      `${plan.windows.map((w) => windowLabel(w.index, plan)).join('; ')}; ${plan.window_schedule ?? 'reference'} order`]);
    if (plan.exits.length) rows.push(['exits', 'Early exits after blocks', plan.exits.join(', ')]);
  }
  fillTable($('plan-table'), rows);
  $('plan-table').dataset.totalBytes = String(plan.total_bytes);
  $('plan-table').dataset.device = plan.device;
}

let checkTimer = 0;
export function scheduleCheck() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkSettings, 250);
}

/// Checks the data and plans memory for the current settings (nothing is allocated).
export async function checkSettings() {
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
    {
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
    const noGpu = /no WebGPU adapter/.test(msg);
    $('plan-status').textContent = noGpu ? 'Tuning needs WebGPU.'
      : memory ? 'This run does not fit.' : 'These settings cannot run.';
    showError('plan-error', noGpu ? msg
      : memory ? `${msg}\nRaise the memory budget (or leave it empty), or lower the sequence length or the LoRA rank.`
        : `${msg}\nChange the mode or its settings above.`);
  }
  setTuneState(tune.state);
}
