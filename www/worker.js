// The GPU worker (an ES module worker): it owns its own instance of the wasm module, its
// own WebGPU device, the model, the tuner and the evaluation model, so the page never
// freezes while a step or a token runs. The page talks to it with requests ({id, op, args}
// → {id, ok, result | error}) and receives events: training ({event: 'step' | 'checkpoint'
// | 'paused' | 'done' | 'cancelled' | 'error', ...}), evaluation progress ({event:
// 'eval-progress', done, total, correct?}), streamed chat text ({event: 'token', text})
// and profiling/compression progress ({event: 'compress-progress', stage, done, total}).
// It drives the engine through ./edge-llm.js, the npm package's wrapper (npm/index.js).
// Tuning and evaluation run on the engine the page's device setting picks ('auto': WebGPU
// on a hardware adapter, the wasm CPU engine on a software adapter such as SwiftShader or
// none); exit voting runs on the same model, which computes every exit's logits in one pass.

import { init, cpuThreads, gpuInfo, loadModel, loseGpuForTesting } from './edge-llm.js';

let model = null;   // Model (the wrapper)
let tuner = null;   // Tuner
let tunerDone = false;  // the run finished: its trainer may be freed once its adapter is read
let runSerial = 0;  // which run the tuner is, to tell its adapters apart
let lm = null;      // Lm: the evaluation and chat model
let lmKey = '';     // what `lm` was built from ('base', 'tuned:<run>:<step>', 'file:<n>')
let tuned = null;   // {key, adapter}: the tuned adapter read from the tuner
let fileAdapter = null;  // {key, adapter, name}: an adapter loaded from disk
let fileSerial = 0;
let evalBusy = false;
let running = false;
let looping = false;
let cancelling = false;
let saveEvery = 0;
const PROBE_STEPS = 2;

function messageOf(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    return `internal error in the WebAssembly module (${e.message}); details are in the browser console`;
  }
  return (e && e.message) || String(e);
}

const post = (msg, transfer = []) => self.postMessage(msg, transfer);

const peftFiles = (f) => ({ safetensors: f.safetensors, config: f.config, exits: f.exits ?? null, zip: f.zip });

function freeTuner() {
  if (tuner) { tuner.free(); tuner = null; }
  tunerDone = false;
}

function freeLm() {
  if (lm) { lm.free(); lm = null; }
  lmKey = '';
}

function freeAdapters() {
  if (tuned) { tuned.adapter.free(); tuned = null; }
  if (fileAdapter) { fileAdapter.adapter.free(); fileAdapter = null; }
}

/// The evaluation model for `source` ('base' | 'tuned' | 'file'), rebuilt only when its
/// weights change. Reading the tuned adapter out of a finished run frees that run's
/// trainer, so the two never both hold GPU memory after tuning (a paused run keeps it:
/// it may still continue).
async function ensureLm(source, device = 'auto') {
  if (!model) throw new Error('no model loaded');
  if (looping) throw new Error('a tuning run is in progress: pause it (or let it finish) before evaluating');
  let key = 'base', adapter = null;
  if (source === 'tuned') {
    if (tuner) {
      const k = `tuned:${runSerial}:${tuner.step}`;
      if (!tuned || tuned.key !== k) {
        if (tuned) tuned.adapter.free();
        tuned = { key: k, adapter: await tuner.adapter() };
      }
      if (tunerDone) freeTuner();
    }
    if (!tuned) throw new Error('no tuned adapter yet: tune the model first, or load an adapter from disk');
    ({ key, adapter } = tuned);
  } else if (source === 'file') {
    if (!fileAdapter) throw new Error('no adapter file loaded');
    ({ key, adapter } = fileAdapter);
  } else if (source !== 'base') {
    throw new Error(`unknown model source ${source}`);
  }
  key = `${key}@${device}`;
  if (!lm || lmKey !== key) {
    freeLm();
    lm = await model.lm({ adapter, device });
    lmKey = key;
  }
  return lm;
}

/// What the page shows about the evaluation model and the GPU memory held.
function evalInfo(source) {
  return {
    source,
    key: lmKey,
    lm_bytes: lm ? lm.gpuBytes : 0,
    max_len: lm ? lm.maxLen : 0,
    lm_exits: lm ? lm.exits : [],
    lm_device: lm ? lm.device : null,
    lm_device_reason: lm ? lm.deviceReason : null,
    trainer_bytes: tuner ? tuner.gpuBytes : 0,
  };
}

/// Runs one evaluation at a time (they share the KV cache).
async function exclusive(fn) {
  if (evalBusy) throw new Error('an evaluation is already running');
  evalBusy = true;
  try { return await fn(); } finally { evalBusy = false; }
}

const ops = {
  // `gpu: false`: no WebGPU device now (the compression worker makes its own when its
  // calibration passes first need one).
  // `cpu`: how many threads the CPU engine got here, and why (cpuThreads in edge-llm.js).
  async init({ gpu = true } = {}) {
    await init();
    const cpu = await cpuThreads();
    if (!gpu) return { cpu };
    try {
      return { cpu, gpu: await gpuInfo() };
    } catch (e) {
      return { cpu, gpuError: messageOf(e) };
    }
  },

  // Tests only: the GPU lost as a driver reset would lose it.
  async debugLoseGpu() {
    await loseGpuForTesting();
    return {};
  },

  async loadModel({ bytes }) {
    if (looping) throw new Error('a run is in progress: cancel it before loading another model');
    if (evalBusy) throw new Error('an evaluation is running: wait for it before loading another model');
    freeTuner();
    freeLm();
    freeAdapters();
    if (model) { model.free(); model = null; }
    model = await loadModel(bytes);
    return model.config;
  },

  checkData({ name, text, kind, options }) {
    if (!model) throw new Error('no model loaded');
    return model.checkData({ name, text, kind, options });
  },

  plan({ options }) {
    if (!model) throw new Error('no model loaded');
    return model.plan(options);
  },

  // Creates the tuner (data preparation, memory plan, GPU allocation) and, given a
  // checkpoint, continues from it. Training starts with `run`.
  async create({ name, text, kind, options, checkpoint, save_every }) {
    if (!model) throw new Error('no model loaded');
    if (looping) throw new Error('a run is already in progress');
    if (evalBusy) throw new Error('an evaluation is running: wait for it before starting a run');
    freeTuner();
    // The evaluation model's memory goes back before the trainer allocates its own.
    freeLm();
    tuner = await model.tuner({ name, text, kind, options });
    runSerial += 1;
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
      plan: tuner.plan,
      data: tuner.data,
      total: tuner.totalSteps,
      step: tuner.step,
      device: tuner.device,
      device_reason: tuner.deviceReason,
    };
  },

  /// The speed of these settings on this device, before a run: a trainer of its own for
  /// PROBE_STEPS steps of one row each (the first pays for warming up), then freed.
  /// `{tokens_per_s, step_ms, row_tokens}` of the last step; null when a run or an
  /// evaluation holds the engine (its memory is not shared with a probe).
  async probe({ name, text, kind, options }) {
    if (!model) throw new Error('no model loaded');
    if (looping || evalBusy || (tuner && !tunerDone)) return null;
    const t = await model.tuner({ name, text, kind, options: { ...options, steps: PROBE_STEPS, accum: 1, eval_every: 0 } });
    try {
      let last = null;
      for (let i = 0; i < PROBE_STEPS; i++) {
        const t0 = performance.now();
        const r = await t.runStep();
        const ms = performance.now() - t0;
        if (r.step === null) break;
        last = { tokens_per_s: (r.tokens * 1000) / Math.max(ms, 1e-3), step_ms: ms, row_tokens: r.tokens };
      }
      return last;
    } finally {
      t.free();
    }
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

  /// The run's adapter as files; `base_model`: the Hugging Face id adapter_config.json
  /// names (none: the model's own).
  async adapter({ base_model } = {}) {
    if (looping) throw new Error('pause the run before downloading the adapter');
    // After evaluation freed a finished run's trainer, its adapter values remain.
    const files = tuner ? await tuner.exportAdapter(base_model) : tuned?.adapter.files(base_model);
    if (!files) throw new Error('no run: start one first');
    return peftFiles(files);
  },

  /// A kept adapter's files again, naming `base_model` as the base: read back for the
  /// loaded model and exported as the run's own adapter is.
  reexportAdapter({ safetensors, config, exits, base_model }) {
    if (!model) throw new Error('no model loaded');
    const adapter = model.importAdapter({ safetensors, config, exits });
    try {
      return peftFiles(adapter.files(base_model));
    } finally {
      adapter.free();
    }
  },

  // ------------------------------------------------ evaluation and chat

  /// A PEFT adapter from disk (adapter_model.safetensors + adapter_config.json), with its
  /// early exits (exits.safetensors) when given.
  loadAdapter({ safetensors, config, exits, name }) {
    if (!model) throw new Error('no model loaded');
    const adapter = model.importAdapter({ safetensors, config, exits });
    if (fileAdapter) fileAdapter.adapter.free();
    fileSerial += 1;
    fileAdapter = { key: `file:${fileSerial}`, adapter, name };
    return { name, rank: adapter.rank, exits: adapter.exits };
  },

  /// Builds (or reuses) the evaluation model and says what it holds.
  prepareEval({ source, device }) {
    return exclusive(async () => {
      await ensureLm(source, device);
      return evalInfo(source);
    });
  },

  perplexity({ source, text, max_tokens, device }) {
    return exclusive(async () => {
      const m = await ensureLm(source, device);
      const r = await m.perplexity(text, {
        maxTokens: max_tokens,
        onProgress: (done, total) => post({ event: 'eval-progress', what: 'perplexity', done, total }),
      });
      return { ...r, ...evalInfo(source) };
    });
  },

  evalMc({ source, jsonl, limit, vote, device }) {
    return exclusive(async () => {
      const m = await ensureLm(source, device);
      const r = await m.evalMc(jsonl, {
        limit,
        // The rule applies to adapters with early exits; others score with their head.
        vote: m.exits.length ? vote : undefined,
        onProgress: (done, total, correct) => post({ event: 'eval-progress', what: 'mc', done, total, correct }),
      });
      return { ...r, ...evalInfo(source) };
    });
  },

  generate({ source, prompt, options, device }) {
    return exclusive(async () => {
      const m = await ensureLm(source, device);
      const vote = m.exits.length ? options.vote : undefined;
      const r = await m.generate(prompt, { ...options, vote, onText: (text) => post({ event: 'token', text }) });
      return { ...r, ...evalInfo(source) };
    });
  },

  // ------------------------------------------------ profiling and compression
  // Work that blocks this worker until it ends (the calibration passes on this worker's own
  // WebGPU device, made on first use; the rest on the CPU): the page runs it in a worker of
  // its own (another instance of this script), so that cancelling (terminating that worker)
  // loses nothing here. `device` ('auto' by default, 'gpu' or 'cpu') is where the calibration
  // passes run (auto: the GPU unless it is a software adapter); the profile and its cache key are the same either way.

  /// The LUC profile on this data: from the cache (IndexedDB, keyed by its profile key)
  /// or measured and stored there.
  async profile({ name, text, kind, options, device }) {
    if (!model) throw new Error('no model loaded');
    const key = model.profileKey({ name, text, kind, options });
    const cached = await profiles.get(key);
    if (cached) return { ...cached, cached: true };
    const p = await model.profile({ name, text, kind, options, device, onProgress: compressProgress });
    await profiles.put(key, p);
    return { ...p, cached: false };
  },

  /// The compressed model's bytes and summary; LUC reuses (and fills) the profile cache.
  async compress({ name, text, kind, options, policy, device }) {
    if (!model) throw new Error('no model loaded');
    if (model.compressed) {
      throw new Error('this model is already compressed: load the original model to compress it again');
    }
    let profile = null, key = null;
    if (!policy && (options.allocation ?? 'luc') === 'luc') {
      key = model.profileKey({ name, text, kind, options });
      profile = await profiles.get(key);
    }
    const r = await model.compress({ name, text, kind, options, policy, profile, device, onProgress: compressProgress });
    if (r.profile) await profiles.put(r.profile.key, r.profile);
    r.summary.profile_cached = Boolean(profile);
    return { bytes: r.bytes, summary: r.summary };
  },

  freeEval() {
    if (evalBusy) throw new Error('an evaluation is running');
    freeLm();
    return evalInfo('');
  },
};

const compressProgress = (stage, done, total) => post({ event: 'compress-progress', stage, done, total });

/// Profiles kept across page loads, by profile key (a database of their own, so the page's
/// run store keeps its version).
const profiles = {
  open() {
    return new Promise((resolve, reject) => {
      const r = indexedDB.open('edge-llm-profiles', 1);
      r.onupgradeneeded = () => r.result.createObjectStore('profiles');
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
  },
  async tx(mode, fn) {
    const db = await this.open();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction('profiles', mode);
        const req = fn(tx.objectStore('profiles'));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
      });
    } finally {
      db.close();
    }
  },
  /// The cached profile, or null (also when storage is unavailable: it is only a cache).
  async get(key) {
    try { return (await this.tx('readonly', (s) => s.get(key))) ?? null; } catch { return null; }
  },
  async put(key, value) {
    try { await this.tx('readwrite', (s) => s.put(value, key)); } catch { /* a cache: measured again next time */ }
  },
};

async function checkpointEvent(event, extra = {}) {
  const bytes = await tuner.checkpoint();
  post({ event, step: tuner.step, total: tuner.totalSteps, checkpoint: bytes, ...extra },
    [bytes.buffer]);
}

/// Resolves after the requests already queued (pause, cancel) have run: the CPU engine's
/// steps complete without waiting on the event loop, so without this a run would take no
/// request until it ended.
function queuedRequests() {
  return new Promise((resolve) => {
    const c = new MessageChannel();
    c.port1.onmessage = () => resolve();
    c.port2.postMessage(0);
  });
}

async function loop() {
  looping = true;
  try {
    while (running) {
      await queuedRequests();
      if (!running) break;
      const t0 = performance.now();
      const report = await tuner.runStep();
      report.step_ms = performance.now() - t0;
      if (report.step !== null) post({ event: 'step', report });
      if (report.stop !== 'steps') {
        running = false;
        const val = await tuner.validationLoss();
        tunerDone = true;
        await checkpointEvent('done', { stop: report.stop, val_loss: val });
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
    const transfer = result && result.safetensors
      ? [result.safetensors.buffer, ...(result.exits ? [result.exits.buffer] : [])] : [];
    if (result && result.bytes instanceof Uint8Array) transfer.push(result.bytes.buffer);
    post({ id, ok: true, result }, transfer);
  } catch (err) {
    post({ id, ok: false, error: messageOf(err) });
  }
};
