// A run's progress: the status line (steps, time, loss, speed), the GPU memory in use, and
// the loss plot with its legend (one colour per window in windowed modes).

import { $, kib, clock } from './ui.js';
import { tune, elapsedMs } from './state.js';
import { windowLabel } from './settings.js';

export function showProgress() {
  const bar = $('tune-progress');
  bar.max = Math.max(tune.total, 1);
  bar.value = tune.step;
  const last = tune.history.train[tune.history.train.length - 1];
  const perStep = tune.sessionSteps ? tune.sessionMs / tune.sessionSteps : 0;
  // Until a step of this session has ended there is no time per step to go by.
  const remaining = perStep ? `remaining ~${clock(perStep * (tune.total - tune.step))}` : 'remaining: measuring…';
  const parts = [
    `Step ${tune.step} of ${tune.total}`,
    `elapsed ${clock(elapsedMs())}`,
    // After the last step the run still validates and saves: 'done' only once it has.
    tune.step < tune.total ? remaining
      : tune.state === 'done' ? 'done' : 'finishing: final validation and saving…',
  ];
  if (last && last[2] !== null && last[2] !== undefined) parts.push(windowLabel(last[2]));
  if (last) parts.push(`loss ${last[1].toFixed(4)}`);
  const lastVal = tune.history.val[tune.history.val.length - 1];
  if (lastVal) parts.push(`validation ${lastVal[1].toFixed(4)}`);
  if (tune.lastTokensPerS) {
    const t = tune.lastTokensPerS;
    parts.push(`${t < 10 ? t.toFixed(2) : Math.round(t)} tokens/s`);
  }
  const state = {
    paused: ' (paused)', pausing: ' (pausing after this step…)', done: ' (finished)', cancelled: ' (cancelled)',
    cancelling: ' (cancelling… after the step in progress)',
  }[tune.state] || '';
  $('tune-status').textContent = parts.join(' · ') + state;
  $('tune-status').dataset.step = String(tune.step);
  if (last && last[2] !== null && last[2] !== undefined) $('tune-status').dataset.window = String(last[2]);
}

/// A time on the plot's axis: seconds under a minute (tenths under ten), else m:ss or h:mm:ss.
const timeLabel = (ms) => (ms < 10_000 ? `${(ms / 1000).toFixed(1)} s`
  : ms < 60_000 ? `${Math.round(ms / 1000)} s` : clock(ms));

/// The plot's x-axis: 'steps' or 'time' (the training time, pauses left out).
const plotAxis = () => document.querySelector('input[name=plot-axis]:checked')?.value ?? 'steps';

export function drawPlot() {
  const canvas = $('loss-plot');
  const ctx = canvas.getContext('2d');
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 800, cssH = canvas.clientHeight || 260;
  if (canvas.width !== Math.round(cssW * dpr)) { canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr); }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const axis = plotAxis();
  // Against time: the points that carry one (a run saved before times were kept has none).
  const timed = tune.history.train.filter((p) => Number.isFinite(p[3]));
  const train = axis === 'time' ? timed : tune.history.train;
  const timeAt = new Map(timed.map((p) => [p[0], p[3]]));
  const val = axis === 'time'
    ? tune.history.val.filter(([s]) => timeAt.has(s)).map(([s, v]) => [s, v, null, timeAt.get(s)])
    : tune.history.val;
  canvas.dataset.axis = axis;
  canvas.dataset.trainPoints = String(train.length);
  canvas.dataset.valPoints = String(val.length);
  // Windowed modes: [step, loss, window, ms]; each window's losses are read at its own exit.
  const windows = [...new Set(train.map((p) => p[2]).filter((w) => w !== null && w !== undefined))];
  canvas.dataset.windows = windows.join(',');
  showLegend(windows);
  const pad = { l: 52, r: 12, t: 12, b: 28 };
  const w = cssW - pad.l - pad.r, h = cssH - pad.t - pad.b;
  ctx.strokeStyle = '#dde1ea';
  ctx.strokeRect(pad.l, pad.t, w, h);
  ctx.fillStyle = '#5b6477';
  ctx.font = '12px system-ui, sans-serif';
  if (!train.length) {
    ctx.fillText(axis === 'time' && tune.history.train.length
      ? 'This run\'s steps were saved without their times: plot it against steps.'
      : 'The loss appears here once training starts.', pad.l + 12, pad.t + h / 2);
    delete canvas.dataset.xMax;
    return;
  }
  const all = [...train, ...val].map((p) => p[1]).filter(Number.isFinite);
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const margin = (hi - lo) * 0.05;
  lo -= margin; hi += margin;
  const lastPoint = train[train.length - 1];
  // The axis spans the whole run: its steps, or its time so far and, while steps remain,
  // the time they would take at the pace so far.
  let xMax, xLabel, xOf;
  if (axis === 'time') {
    const spent = Math.max(lastPoint[3], 1);
    const left = lastPoint[0] > 0 && tune.step < tune.total;
    xMax = left ? spent * (tune.total / lastPoint[0]) : spent;
    xLabel = `${left ? '~' : ''}${timeLabel(xMax)}`;
    xOf = (p) => p[3];
  } else {
    xMax = Math.max(tune.total, lastPoint[0], 1);
    xLabel = `step ${xMax}`;
    xOf = (p) => p[0];
  }
  canvas.dataset.xMax = String(Math.round(xMax));
  canvas.dataset.xLabel = xLabel;
  const x = (p) => pad.l + (xOf(p) / xMax) * w;
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * h;
  ctx.textAlign = 'right';
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    ctx.fillText(v.toFixed(2), pad.l - 6, y(v) + 4);
    ctx.strokeStyle = '#eef0f5';
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(pad.l + w, y(v)); ctx.stroke();
  }
  ctx.textAlign = 'left';
  ctx.fillText('0', pad.l, cssH - 8);
  ctx.textAlign = 'center';
  ctx.fillText(axis === 'time' ? 'training time (pauses left out)' : 'step', pad.l + w / 2, cssH - 8);
  ctx.textAlign = 'right';
  ctx.fillText(xLabel, pad.l + w, cssH - 8);
  ctx.lineWidth = 1.5;
  // One stroke per run of steps in the same window, joined to the previous point.
  let prev = null;
  for (let i = 0; i < train.length;) {
    const win = train[i][2];
    let j = i;
    while (j < train.length && train[j][2] === win) j++;
    ctx.strokeStyle = windowColour(win);
    ctx.beginPath();
    const from = prev ?? train[i];
    ctx.moveTo(x(from), y(from[1]));
    for (let k = i; k < j; k++) ctx.lineTo(x(train[k]), y(train[k][1]));
    ctx.stroke();
    if (j - i === 1 && !prev) {
      ctx.fillStyle = windowColour(win);
      ctx.fillRect(x(train[i]) - 2, y(train[i][1]) - 2, 4, 4);
    }
    prev = train[j - 1];
    i = j;
  }
  ctx.fillStyle = '#e0781f';
  for (const p of val) {
    ctx.beginPath(); ctx.arc(x(p), y(p[1]), 4, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.lineWidth = 1;
}

// Training-loss colours by window (the first is the single-window colour).
const WINDOW_COLOURS = ['#2f6fde', '#17a589', '#8e44ad', '#c0392b', '#b7950b', '#2c3e50', '#d35400', '#7f8c8d'];
const windowColour = (w) => WINDOW_COLOURS[(w ?? 0) % WINDOW_COLOURS.length];

/// The plot's legend: one training-loss swatch per window seen (windowed modes).
function showLegend(windows) {
  const legend = $('loss-legend');
  const key = windows.join(',');
  if (legend.dataset.windows === key && legend.childNodes.length) return;
  legend.dataset.windows = key;
  const swatch = (cls, colour) => {
    const s = document.createElement('span');
    s.className = `swatch ${cls}`;
    if (colour) s.style.background = colour;
    return s;
  };
  const items = [];
  if (windows.length) {
    for (const w of windows) {
      const item = document.createElement('span');
      item.className = 'window';
      item.dataset.window = String(w);
      item.append(swatch('train', windowColour(w)), ` training loss, ${windowLabel(w)}`);
      items.push(item);
    }
  } else {
    items.push(swatch('train'), ' training loss');
  }
  items.push(swatch('val'), windows.length ? ' validation loss (at the window\'s exit; the last: whole model)' : ' validation loss');
  legend.replaceChildren(...items);
}

/// Where the run trains and the memory it holds: the GPU's bytes in use against the plan,
/// or the CPU engine and why it was chosen.
export function showGpuBytes(bytes) {
  $('tune-gpu').dataset.device = tune.device;
  if (tune.device === 'cpu') {
    $('tune-gpu').textContent = `Training on ${tune.deviceReason}; about ${kib(tune.plan?.total_bytes ?? 0)} of memory planned.`;
    $('tune-gpu').dataset.bytes = '0';
    return;
  }
  const planned = tune.plan ? tune.plan.total_bytes : 0;
  $('tune-gpu').textContent = `GPU memory in use: ${kib(bytes)} of ${kib(planned)} planned` +
    (bytes === planned ? ' (exactly the plan: everything is allocated once, up front)' : '');
  $('tune-gpu').dataset.bytes = String(bytes);
}
