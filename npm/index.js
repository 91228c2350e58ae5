// edge-llm: LoRA fine-tuning, evaluation and generation of LLaMA-family GGUF models on
// WebGPU, in the browser. A thin typed layer over the wasm-bindgen module in ./pkg (the
// Rust engine): it parses the JSON the engine returns and adds a run loop with callbacks.
// The same file is the npm package's entry and the page's (www/edge-llm.js links here),
// so the app exercises exactly what the package ships.

/// The wasm-bindgen module in use (./pkg, or ./pkg-threads where the CPU engine runs on
/// several threads), set by `init`.
export let raw = null;

let loading = null;
let threading = { threads: 1, note: 'not loaded yet' };

/// How many threads this thread's CPU engine may use, and why not more: the threaded module
/// needs shared memory (a cross-origin isolated page: COOP/COEP headers) and a thread that
/// may wait on others (a worker, not a page's main thread).
function threadsAllowed() {
  const cores = globalThis.navigator?.hardwareConcurrency || 1;
  const inWorker = typeof WorkerGlobalScope !== 'undefined' && globalThis instanceof WorkerGlobalScope;
  if (!inWorker && typeof window === 'undefined') {
    return { threads: 1, note: 'one thread: outside a browser (the threaded module runs on Web Workers)' };
  }
  if (globalThis.crossOriginIsolated !== true || typeof SharedArrayBuffer === 'undefined') {
    return { threads: 1, note: 'one thread: the page is not cross-origin isolated (its server sends no COOP/COEP headers; scripts/run.sh sends them)' };
  }
  if (!inWorker) return { threads: 1, note: "one thread: a page's main thread cannot wait on workers" };
  if (cores < 2) return { threads: 1, note: 'one thread: this device reports one core' };
  return { threads: cores, note: `${cores} threads` };
}

async function load(wasm, threads) {
  const allowed = threadsAllowed();
  const want = threads === undefined ? allowed.threads : Math.min(threads, allowed.threads);
  if (want > 1 && wasm === undefined) {
    try {
      const mod = await import('./pkg-threads/edge_llm.js');
      await mod.default();
      await mod.initThreadPool(want);
      raw = mod;
      threading = { threads: mod.cpuThreads(), note: `${mod.cpuThreads()} threads` };
      return;
    } catch (e) {
      threading = { threads: 1, note: `one thread: the threaded module did not load (${e?.message ?? e})` };
    }
  } else {
    threading = threads !== undefined && threads <= 1
      ? { threads: 1, note: 'one thread, as asked' }
      : allowed;
  }
  const mod = await import('./pkg/edge_llm.js');
  await mod.default(wasm === undefined ? undefined : { module_or_path: wasm });
  raw = mod;
}

/// Loads the WebAssembly module once (from `wasm`, a URL or bytes, or the file beside
/// ./pkg/edge_llm.js). Call before anything else. In a worker of a cross-origin isolated
/// page the CPU engine gets a thread per core (the threaded module ./pkg-threads, with its
/// own pool of workers); `threads` caps that (1: the single-threaded module).
export function init(wasm, { threads } = {}) {
  loading ??= load(wasm, threads);
  return loading;
}

/// How many threads the CPU engine uses in this thread's module, and in words why.
export async function cpuThreads() {
  await init();
  return { ...threading };
}

/// Creates this thread's WebGPU device (once) and describes the adapter and its limits.
/// Tuning and evaluation use this device; they call it themselves when needed.
export async function gpuInfo() {
  await init();
  return JSON.parse(await raw.gpu_info());
}

/// Destroys this thread's WebGPU device as a driver reset would (for tests of what an app
/// does when the GPU is lost: every later GPU call fails with a plain message).
export async function loseGpuForTesting() {
  await init();
  raw.debug_lose_gpu();
}

/// Checks a Hugging Face model id for an adapter's `base_model_name_or_path` (owner/name, as
/// the export checks it): throws an Error that says what is wrong, in plain words.
export async function checkBaseModel(id) {
  await init();
  raw.check_base_model(id);
}

/// A GGUF model from a URL, a Blob/File, an ArrayBuffer or a Uint8Array.
export async function loadModel(source) {
  await init();
  let bytes;
  if (typeof source === 'string' || source instanceof URL) {
    const r = await fetch(source);
    if (!r.ok) throw new Error(`could not fetch ${source}: HTTP ${r.status}`);
    bytes = new Uint8Array(await r.arrayBuffer());
  } else if (typeof Blob !== 'undefined' && source instanceof Blob) {
    bytes = new Uint8Array(await source.arrayBuffer());
  } else if (source instanceof ArrayBuffer) {
    bytes = new Uint8Array(source);
  } else if (source instanceof Uint8Array) {
    bytes = source;
  } else {
    throw new TypeError('loadModel takes a URL, a Blob, an ArrayBuffer or a Uint8Array');
  }
  return new Model(raw.load_model(bytes));
}

const asJson = (o) => JSON.stringify(o ?? {});

export class Model {
  /// Wraps a `raw.WebModel` (use `loadModel`).
  constructor(inner) {
    this.inner = inner;
    this.config = JSON.parse(inner.config_json());
  }

  get fileBytes() { return this.inner.file_bytes(); }

  /// What the model is, for people: `{hf_id, name, weights}` (the Hugging Face id of a file
  /// recognised by its sha256, else null; the file's own name; the main weight type, "Q4_1").
  /// The first call hashes the file.
  get identity() { return JSON.parse(this.inner.identity_json()); }

  /// Whether the file is a compressed model (`edge-llm compress`): compress-then-tune
  /// needs one.
  get compressed() { return this.inner.is_compressed(); }

  tokenize(text) { return Array.from(this.inner.tokenize(text)); }

  tokenStrings(ids) { return this.inner.token_strings(Uint32Array.from(ids)); }

  /// `text` as the user turn of the model's ChatML template.
  chatPrompt(text) { return this.inner.chat_prompt(text); }

  /// Parses and prepares tuning data without the GPU: `{kind, records, problems, stats}`.
  checkData({ text, name = 'data.txt', kind = 'auto', options = {} }) {
    return JSON.parse(this.inner.check_data(name, text, kind, asJson(options)));
  }

  /// The memory plan of a tuning run (nothing is allocated) on the engine `options.device`
  /// picks ('auto' by default: WebGPU on a hardware adapter, the CPU engine on a software
  /// adapter or none), with `device`, `device_reason`, `mode`, `exits` and `windows`
  /// (windowed modes, partial and edge, plan their windows).
  async plan(options = {}) {
    return JSON.parse(await this.inner.plan_tuning(asJson(options)));
  }

  /// A LoRA tuning run on `text` (plain text, instruction JSONL or multiple-choice JSONL;
  /// `kind`: 'auto' | 'text' | 'instruct' | 'mc'); `options` as `edge-llm tune`
  /// (steps, lr, seq_len, lora_rank, accum, mode, exit_stride, device, …). The trainer
  /// is built on the engine `options.device` picks, as `plan()` says.
  async tuner({ text, name = 'data.txt', kind = 'auto', options = {} }) {
    return new Tuner(await this.inner.tuner(name, text, kind, asJson(options)));
  }

  /// Reads a PEFT adapter (`adapter_model.safetensors` bytes, `adapter_config.json` text),
  /// with its early exits (`exits.safetensors` bytes) if given.
  importAdapter({ safetensors, config, exits = null }) {
    return new Adapter(this.inner.import_adapter(safetensors, config, exits ?? undefined));
  }

  /// The policy a compressed model was made with (null for an uncompressed model).
  get policy() {
    const p = this.inner.policy_json();
    return p ? JSON.parse(p) : null;
  }

  /// A copy of the GGUF file's bytes (to send to another worker, or to save).
  bytes() { return this.inner.bytes(); }

  /// Checks a compression policy document (text or object) against this model; returns
  /// it parsed, or throws the first problem (e.g. 'policy: 3 layer entries for a model of
  /// 2 layers').
  checkPolicy(policy) {
    return JSON.parse(this.inner.check_policy(typeof policy === 'string' ? policy : JSON.stringify(policy)));
  }

  /// The cache key of the LUC profile `profile()` would measure on this data and these
  /// compression options (a hash of the model, the calibration tokens and the profile
  /// settings): keep profiles under it so a second LUC compression skips profiling.
  profileKey({ text, name = 'data.txt', kind = 'auto', options = {} }) {
    return this.inner.profile_key(name, text, kind, asJson(options));
  }

  /// Measures the LUC sensitivity profile (per block: the Fisher estimate of the loss
  /// change, the output error and optionally the measured loss change, at each sparsity
  /// and bit width) on `text`, calibrating as `options` say (`calib_rows`, `seq_len`,
  /// `fisher_rows`, `loss_rows`, `profile_method`). The calibration passes run where
  /// `device` says: 'auto' (the default) this thread's WebGPU device unless it is a software
  /// adapter such as SwiftShader (where the CPU reference is much faster) or there is none,
  /// 'gpu' the WebGPU device whatever it is, 'cpu' the CPU reference; the rest is CPU work
  /// in the calling thread (use a worker); `onProgress(stage, done, total)`, stages
  /// 'calibrate', 'fisher', 'profile'.
  /// Returns `{key, profile, prune_sensitivity, quant_sensitivity, seconds, device}`
  /// (`device`: where the calibration passes ran, 'gpu' or 'cpu').
  async profile({ text, name = 'data.txt', kind = 'auto', options = {}, device = 'auto', onProgress } = {}) {
    return JSON.parse(await this.inner.profile(name, text, kind, asJson(options), device, onProgress ?? null));
  }

  /// Compresses the model as `edge-llm compress` does (the same engine code): `options`
  /// are its flags (`sparsity`, `bits`, `allocation` 'luc' | 'uniform', `method`,
  /// `pattern`, `quant`, `group`, `symmetric`, `calib_rows`, `seq_len`, `sparsity_rule`
  /// 'least-error' | 'reference', …), calibrating on
  /// `text`. `policy` (a policy document, as text or object) overrides the allocation;
  /// `profile` (what `profile()` returned, e.g. from a cache) spares LUC the profiling.
  /// Calibration passes on `device` as in `profile()`; the rest is CPU work in the calling
  /// thread (use a worker); `onProgress(stage, done, total)`.
  /// Returns `{bytes, summary, profile}`: the compressed GGUF file, the summary (policy,
  /// file sizes, per-layer sparsity, bits and sensitivity, notes) and the profile when
  /// this call measured one (null otherwise), to cache under `profile.key`.
  async compress({ text, name = 'data.txt', kind = 'auto', options = {}, policy = null, profile = null, device = 'auto', onProgress } = {}) {
    const policyText = policy == null ? undefined : (typeof policy === 'string' ? policy : JSON.stringify(policy));
    const profileText = profile == null ? undefined : JSON.stringify(profile);
    const r = await this.inner.compress(name, text, kind, asJson(options), policyText, profileText, device, onProgress ?? null);
    return {
      bytes: r.bytes,
      summary: JSON.parse(r.summary),
      profile: r.profile ? JSON.parse(r.profile) : null,
    };
  }

  /// The model for evaluation and generation, with `adapter` if given, on the engine
  /// `device` picks (as for tuning: 'auto', 'gpu' or 'cpu'). `maxLen`: the GPU model's
  /// KV-cache positions (default min(context, 2048)).
  async lm({ adapter = null, maxLen, device = 'auto' } = {}) {
    const opts = asJson(maxLen ? { max_len: maxLen, device } : { device });
    return new Lm(await (adapter ? this.inner.lm_with_adapter(adapter.inner, opts) : this.inner.lm(opts)));
  }

  free() { this.inner.free(); }
}

export class Tuner {
  constructor(inner) {
    this.inner = inner;
    this.plan = JSON.parse(inner.plan_json());
    this.data = JSON.parse(inner.data_json());
  }

  get totalSteps() { return this.inner.total_steps(); }
  get step() { return this.inner.current_step(); }
  get gpuBytes() { return this.inner.gpu_bytes(); }
  /// 'gpu' or 'cpu': where the run trains, and why in plain words.
  get device() { return this.inner.device(); }
  get deviceReason() { return this.inner.device_reason(); }

  /// One optimizer step: `{step, loss, lr, tokens_per_s, val_loss?, stop, …}`; `stop` is
  /// 'steps' while the run goes on.
  async runStep() {
    return JSON.parse(await this.inner.step());
  }

  /// Steps until the run ends (or `signal` aborts), calling `onStep(report)` after each.
  /// Returns the last report.
  async run({ onStep, signal } = {}) {
    let last = null;
    while (!signal?.aborted) {
      const r = await this.runStep();
      if (r.step !== null) {
        last = r;
        onStep?.(r);
      }
      if (r.stop !== 'steps') break;
    }
    return last;
  }

  /// The whole model's validation loss (to its last exit): it leaves the layer window,
  /// so call it at the end of a run.
  async validationLoss() { return (await this.inner.validation_loss()) ?? null; }

  /// Bytes to continue from exactly (`resume`).
  checkpoint() { return this.inner.checkpoint(); }

  resume(bytes) { return this.inner.resume(bytes); }

  /// The adapter's current values, to evaluate with or export.
  async adapter() { return new Adapter(await this.inner.adapter()); }

  /// `{safetensors: Uint8Array, config: string, exits?: Uint8Array, zip: Uint8Array}`: the
  /// PEFT adapter files, `exits.safetensors` when the run has early exits, and all of them
  /// as one zip. `baseModel`: the Hugging Face id (owner/name) that `adapter_config.json`
  /// names as the base (checked as `checkBaseModel` does; omitted: the model's own).
  exportAdapter(baseModel) { return this.inner.adapter_files(baseModel ?? undefined); }

  free() { this.inner.free(); }
}

export class Adapter {
  constructor(inner) { this.inner = inner; }

  get rank() { return this.inner.rank(); }
  /// Block counts after which its early exits sit (empty: plain LoRA).
  get exits() { return Array.from(this.inner.exits()); }

  /// `{safetensors: Uint8Array, config: string, exits?: Uint8Array}`:
  /// `adapter_model.safetensors` and `adapter_config.json`, loadable by PEFT and by
  /// `edge-llm --adapter`, `exits.safetensors` when it has early exits, and all of them as
  /// one zip. `baseModel`: as for `Tuner.exportAdapter`.
  files(baseModel) { return this.inner.files(baseModel ?? undefined); }

  free() { this.inner.free(); }
}

export class Lm {
  constructor(inner) { this.inner = inner; }

  get gpuBytes() { return this.inner.gpu_bytes(); }
  /// 'gpu' or 'cpu': where the model runs, and why in plain words.
  get device() { return this.inner.device(); }
  get deviceReason() { return this.inner.device_reason(); }
  get maxLen() { return this.inner.max_len(); }
  get hasAdapter() { return this.inner.has_adapter(); }
  /// Block counts after which the adapter's early exits sit (empty: none). With exits,
  /// accuracy and generation vote over them, in one pass to the deepest exit.
  get exits() { return Array.from(this.inner.exits()); }

  /// Perplexity of the first `maxTokens` tokens of `text`.
  async perplexity(text, { maxTokens = 512, onProgress } = {}) {
    return JSON.parse(await this.inner.perplexity(text, maxTokens, onProgress ?? null));
  }

  /// Zero-shot accuracy on the first `limit` questions of multiple-choice JSONL
  /// (`{"question", "choices", "answer"}` per line). With early exits: every exit's and
  /// every voting rule's accuracy, the answer voted by `vote` (default 'max').
  async evalMc(jsonl, { limit = 20, onProgress, vote } = {}) {
    return JSON.parse(await this.inner.eval_mc(jsonl, limit, onProgress ?? null, vote ?? undefined));
  }

  /// A reply to `prompt`, streamed to `onText(piece)`; temperature 0 is greedy. With
  /// early exits it samples their distributions combined by `vote` (default 'max').
  async generate(prompt, { maxTokens = 64, temperature = 0, topP = 1, seed = 0, chat = true, vote, onText } = {}) {
    const opts = { max_tokens: maxTokens, temperature, top_p: topP, seed, chat };
    if (vote) opts.vote = vote;
    return JSON.parse(await this.inner.generate(prompt, JSON.stringify(opts), onText ?? null));
  }

  free() { this.inner.free(); }
}

/// The run report's format version (`runReport`).
export const RUN_REPORT_VERSION = 1;

/// A run report: one JSON document with what a session did, from the parts the caller has
/// (each may be null): `model` ({name, file_bytes, config, compressed, policy}),
/// `compression` (compress()'s summary), `data` ({name, kind, source, stats}), `tuning`
/// ({options, mode, device, steps, total_steps, stop, losses: [{step, loss, window}],
/// validation: [{step, loss}], windows, exits, plan, seconds}), `evaluation`
/// ({perplexity, accuracy, chat}) and `gpu` (gpuInfo()). The page's "Download run report"
/// writes it.
export function runReport({ model = null, compression = null, data = null, tuning = null,
  evaluation = null, gpu = null, ...extra } = {}) {
  return {
    format: 'edge-llm run report',
    version: RUN_REPORT_VERSION,
    created: new Date().toISOString(),
    model,
    compression,
    data,
    tuning,
    evaluation,
    gpu,
    ...extra,
  };
}
