// The page: WebGPU adapter info, the model (default or picked from disk) and its
// configuration, the prompt tokenized live, compression, LoRA tuning, and evaluation and
// chat with the tuned model. All work happens in ./pkg/edge_llm.js (the Rust crate compiled
// to WebAssembly by scripts/build-wasm.sh), reached through ./edge-llm.js, the npm package's
// wrapper (npm/index.js). Tuning, evaluation and chat run in ./worker.js, which has its own
// copy of the module and its own GPU device, so the page stays responsive. Checkpoints go
// to IndexedDB, so a run survives a reload.
//
// The page leads with five steps (model, data, tune, try it, download); the device's WebGPU
// details, the tokenizer viewer and compression are collapsed below them. Each section is a
// module in ./page/: model, tune (with settings, estimate, plot and storage), eval, download,
// report, and the advanced gpu, prompt and compress. They share ui.js (helpers), state.js
// (what the sections share), controls.js (which controls are enabled) and worker-client.js
// (the one client of worker.js). This file wires them and starts the page.

import { $, showError, messageOf } from './page/ui.js';
import { setWasm } from './page/state.js';
import { showGpu } from './page/gpu.js';
import { onModelLoaded, loadDefault, loadPicked } from './page/model.js';
import { tokenize, setupPrompt } from './page/prompt.js';
import { setupCompress, compressModelLoaded } from './page/compress.js';
import { tuneWorkerReady, setupTuning, tuneModelLoaded } from './page/tune.js';
import { setupEval } from './page/eval.js';
import { setupReport } from './page/report.js';

async function main() {
  try {
    const wasm = await import('./edge-llm.js');
    setWasm(wasm);
    await wasm.init();
  } catch (e) {
    const msg = `The WebAssembly module did not load (${messageOf(e)}). Build it with ` +
      'scripts/build-wasm.sh (scripts/run.sh does this) and reload.';
    showError('gpu-error', msg);
    showError('model-error', msg);
    $('gpu-status').textContent = $('model-status').textContent = 'Not started.';
    return;
  }
  // A loaded model: its prompt tokens, whether compression has its original, and the
  // worker's own copy for tuning and evaluation.
  onModelLoaded(async (bytes, origin) => {
    tokenize();
    compressModelLoaded(origin);
    await tuneModelLoaded(bytes);
  });
  setupPrompt();
  $('model-file').addEventListener('change', loadPicked);
  for (const id of ['opt-seq', 'opt-exit-stride', 'opt-partial']) {
    $(id).addEventListener('input', () => { $(id).dataset.touched = 'true'; });
  }
  setupTuning();
  setupEval();
  setupCompress();
  setupReport();
  await Promise.all([showGpu(), loadDefault(), tuneWorkerReady]);
  document.body.dataset.ready = 'true';
}

main();
