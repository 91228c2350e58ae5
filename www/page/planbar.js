// The memory plan as a picture: one bar, a segment per category of the plan, drawn against
// what the plan is held to: the memory budget on the GPU (none set: the bar is the plan
// itself), and on the CPU engine what the tab gives the WebAssembly module, the model file
// (held beside the plan) included.

import { $, kib, mib } from './ui.js';

// Segment colours, in the plan's order of categories (the same order every time).
const COLOURS = ['#2f6fde', '#17a589', '#8e44ad', '#e0781f', '#c0392b', '#b7950b', '#2c3e50', '#7f8c8d', '#d35400'];

/// The bar's parts: [{name, bytes}], the limit ({bytes, what} or null) and the total.
export function planParts(plan) {
  const parts = plan.by_category
    .filter((c) => c.bytes > 0)
    .map((c) => ({ name: c.category.replace('_', ' '), bytes: c.bytes }));
  if (plan.device === 'cpu' && plan.file_bytes) parts.unshift({ name: 'the model file', bytes: plan.file_bytes });
  const total = parts.reduce((a, p) => a + p.bytes, 0);
  let limit = null;
  if (plan.device === 'cpu' && plan.limit_bytes) limit = { bytes: plan.limit_bytes, what: 'what this tab gives the engine' };
  else if (plan.device !== 'cpu' && plan.budget_bytes) limit = { bytes: plan.budget_bytes, what: 'your memory budget' };
  return { parts, limit, total };
}

/// Shows `plan` as the bar under the plan's line (hidden by `hidePlanBar`).
export function showPlanBar(plan) {
  const { parts, limit, total } = planParts(plan);
  const scale = Math.max(total, limit?.bytes ?? 0, 1);
  const bar = $('plan-bar');
  const segments = parts.map((p, i) => {
    const seg = document.createElement('span');
    seg.className = 'seg';
    seg.dataset.category = p.name;
    seg.dataset.bytes = String(p.bytes);
    seg.style.width = `${(100 * p.bytes) / scale}%`;
    seg.style.background = COLOURS[i % COLOURS.length];
    seg.title = `${p.name}: ${kib(p.bytes)}`;
    return seg;
  });
  bar.replaceChildren(...segments);
  bar.dataset.total = String(total);
  bar.dataset.scale = String(scale);
  bar.dataset.limit = limit ? String(limit.bytes) : '';
  bar.setAttribute('aria-label', `Memory plan: ${kib(total)}${limit ? ` of ${mib(limit.bytes)}, ${limit.what}` : ''}`);

  const legend = $('plan-bar-legend');
  const items = parts.map((p, i) => {
    const item = document.createElement('span');
    item.className = 'item';
    const sw = document.createElement('span');
    sw.className = 'swatch box';
    sw.style.background = COLOURS[i % COLOURS.length];
    item.append(sw, `${p.name} ${kib(p.bytes)}`);
    return item;
  });
  const share = limit ? ` (${Math.round((100 * total) / limit.bytes)} %)` : '';
  const scaleNote = document.createElement('span');
  scaleNote.className = 'item scale';
  scaleNote.textContent = limit
    ? `${kib(total)} of ${mib(limit.bytes)}${share}: the whole bar is ${limit.what}`
    : `${kib(total)} in all; no memory budget set, so only the device's limits apply`;
  legend.replaceChildren(scaleNote, ...items);
  $('plan-bar-box').hidden = false;
}

export function hidePlanBar() {
  $('plan-bar-box').hidden = true;
}
