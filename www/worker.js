// The tuning worker (an ES module worker): it owns its own instance of the wasm module, its
// own WebGPU device, the model and the WebTuner, so the page never freezes while a step
// runs. The page talks to it with requests ({id, op, args} → {id, ok, result | error}) and
// receives training events ({event: 'step' | 'checkpoint' | 'paused' | 'done' |
// 'cancelled' | 'error', ...}) while a run goes on.

import init, * as wasm from './pkg/edge_llm.js';

let model = null;   // WebModel
let tuner = null;   // WebTuner
let running = false;
let looping = false;
let cancelling = false;
let saveEvery = 0;

function messageOf(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    return `internal error in the WebAssembly module (${e.message}); details are in the browser console`;
  }
  return (e && e.message) || String(e);
}

const post = (msg, transfer = []) => self.postMessage(msg, transfer);

function freeTuner() {
  if (tuner) { tuner.free(); tuner = null; }
}

const ops = {
  async init() {
    await init();
    try {
      return { gpu: JSON.parse(await wasm.gpu_info()) };
    } catch (e) {
      return { gpuError: messageOf(e) };
    }
  },

  loadModel({ bytes }) {
    if (looping) throw new Error('a run is in progress: cancel it before loading another model');
    freeTuner();
    if (model) { model.free(); model = null; }
    model = wasm.load_model(bytes);
    return JSON.parse(model.config_json());
  },

  checkData({ name, text, kind, options }) {
    if (!model) throw new Error('no model loaded');
    return JSON.parse(model.check_data(name, text, kind, JSON.stringify(options)));
  },

  plan({ options }) {
    if (!model) throw new Error('no model loaded');
    return JSON.parse(model.plan_tuning(JSON.stringify(options)));
  },

  // Creates the tuner (data preparation, memory plan, GPU allocation) and, given a
  // checkpoint, continues from it. Training starts with `run`.
  async create({ name, text, kind, options, checkpoint, save_every }) {
    if (!model) throw new Error('no model loaded');
    if (looping) throw new Error('a run is already in progress');
    freeTuner();
    tuner = model.tuner(name, text, kind, JSON.stringify(options));
    saveEvery = save_every || 0;
    if (checkpoint) {
      try {
        await tuner.resume(checkpoint);
      } catch (e) {
        freeTuner();
        throw e;
      }
    }
    return {
      plan: JSON.parse(tuner.plan_json()),
      data: JSON.parse(tuner.data_json()),
      total: tuner.total_steps(),
      step: tuner.current_step(),
    };
  },

  run() {
    if (!tuner) throw new Error('no run to continue');
    running = true;
    if (!looping) loop();
    return true;
  },

  // Stops after the current step; the loop then posts 'paused' with a checkpoint.
  pause() {
    running = false;
    return looping;
  },

  cancel() {
    running = false;
    if (looping) {
      cancelling = true;
    } else {
      freeTuner();
      post({ event: 'cancelled' });
    }
    return true;
  },

  async adapter() {
    if (!tuner) throw new Error('no run: start one first');
    if (looping) throw new Error('pause the run before downloading the adapter');
    const files = await tuner.adapter_files();
    return { safetensors: files.safetensors, config: files.config };
  },
};

async function checkpointEvent(event, extra = {}) {
  const bytes = await tuner.checkpoint();
  post({ event, step: tuner.current_step(), total: tuner.total_steps(), checkpoint: bytes, ...extra },
    [bytes.buffer]);
}

async function loop() {
  looping = true;
  try {
    while (running) {
      const t0 = performance.now();
      const report = JSON.parse(await tuner.step());
      report.step_ms = performance.now() - t0;
      if (report.step !== null) post({ event: 'step', report });
      if (report.stop !== 'steps') {
        running = false;
        const val = await tuner.validation_loss();
        await checkpointEvent('done', { stop: report.stop, val_loss: val ?? null });
        return;
      }
      if (saveEvery > 0 && report.step % saveEvery === 0 && running) {
        await checkpointEvent('checkpoint');
      }
    }
    if (cancelling) return;
    await checkpointEvent('paused');
  } catch (e) {
    running = false;
    post({ event: 'error', message: messageOf(e) });
  } finally {
    looping = false;
    if (cancelling) {
      cancelling = false;
      freeTuner();
      post({ event: 'cancelled' });
    }
  }
}

self.onmessage = async (e) => {
  const { id, op, args } = e.data;
  try {
    if (!(op in ops)) throw new Error(`unknown request ${op}`);
    const result = await ops[op](args || {});
    const transfer = result && result.safetensors ? [result.safetensors.buffer] : [];
    post({ id, ok: true, result }, transfer);
  } catch (err) {
    post({ id, ok: false, error: messageOf(err) });
  }
};
