// The run report: one JSON file with what the page did so far.

import { $, messageOf, kib } from './ui.js';
import { wasm, modelInfo, gpuDescription, tune, cmp, evalState, elapsedMs } from './state.js';

/// Everything the page has at this moment, as `runReport` (edge-llm.js) assembles it.
function buildReport() {
  const run = tune.run;
  const history = tune.history;
  const windowsOf = tune.plan?.windows;
  const tuning = run ? {
    options: run.options,
    mode: run.options.mode ?? 'vanilla',
    device: tune.device,
    state: tune.state,
    steps: tune.step,
    total_steps: tune.total,
    save_every: run.save_every,
    losses: history.train.map(([step, loss, window]) => ({ step, loss, window: window ?? null })),
    validation: history.val.map(([step, loss]) => ({ step, loss })),
    windows: windowsOf ?? null,
    exits: tune.plan?.exits ?? [],
    window_schedule: tune.plan?.window_schedule ?? null,
    plan: tune.plan,
    seconds: elapsedMs() / 1000,
    tokens_per_s: tune.speeds.length ? tune.speeds.reduce((a, [, t]) => a + t, 0) / tune.speeds.length : null,
    step_timings: tune.speeds.map(([step, tps, ms]) => ({ step, tokens_per_s: tps, ms })),
    model: run.model,
  } : null;
  const data = run ? {
    name: run.data.name, kind: run.data.kind, source: run.data.source,
    bytes: run.data.text ? run.data.text.length : undefined,
    stats: tune.dataInfo?.stats ?? null, records: tune.dataInfo?.records ?? null,
  } : null;
  return wasm.runReport({
    model: modelInfo ? {
      name: modelInfo.name, file_bytes: modelInfo.bytes, config: modelInfo.config,
      compressed: modelInfo.compressed, policy: modelInfo.policy,
      compressed_from: modelInfo.compressed && cmp.summary ? cmp.original?.name ?? null : null,
    } : null,
    compression: cmp.summary,
    data,
    tuning,
    evaluation: evalState.results,
    gpu: gpuDescription,
  });
}

function onReport() {
  let report;
  try {
    report = buildReport();
  } catch (e) {
    $('report-status').textContent = `The report could not be made: ${messageOf(e)}`;
    return;
  }
  const blob = new Blob([JSON.stringify(report, null, 2)], { type: 'application/json' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'edge-llm-run-report.json';
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  $('report-status').textContent = `edge-llm-run-report.json (${kib(blob.size)}): model ${report.model?.name ?? '—'}` +
    `${report.tuning ? `, ${report.tuning.steps} tuning steps` : ''}${report.compression ? ', compression' : ''}.`;
}

export function setupReport() {
  $('report-download').addEventListener('click', onReport);
}
