// Types of index.js. The raw wasm-bindgen API's types are ./pkg/edge_llm.d.ts, whose classes
// are disposable (`Symbol.dispose`): the reference below gives a consumer compiling against an
// older `lib` that declaration.
/// <reference lib="esnext.disposable" />
import type * as Raw from './pkg/edge_llm.js';

/** The wasm-bindgen module in use, set by `init` (./pkg, or ./pkg-threads with threads). */
export declare let raw: typeof Raw;

/**
 * Loads the WebAssembly module once; `wasm` overrides where edge_llm_bg.wasm is fetched from.
 * In a worker of a cross-origin isolated page the CPU engine gets a thread per core (the
 * threaded module ./pkg-threads); `threads` caps that (1: the single-threaded module).
 */
export declare function init(
  wasm?: string | URL | Request | Response | BufferSource | WebAssembly.Module,
  options?: { threads?: number },
): Promise<void>;

export interface CpuThreads {
  /** Threads the CPU engine splits its work over in this thread's module. */
  threads: number;
  /** Why (e.g. "2 threads", or "one thread: the page is not cross-origin isolated …"). */
  note: string;
}

/** How many threads the CPU engine uses here, and why not more. */
export declare function cpuThreads(): Promise<CpuThreads>;

export interface GpuInfo {
  adapter: string;
  backend: string;
  device_type: string;
  features: string[];
  adapter_features: string[];
  device_limits: Record<string, number>;
  adapter_limits: Record<string, number>;
  [key: string]: unknown;
}

/** Creates this thread's WebGPU device (once) and describes it. */
export declare function gpuInfo(): Promise<GpuInfo>;

/** Destroys this thread's WebGPU device as a driver reset would (tests only). */
export declare function loseGpuForTesting(): Promise<void>;

/** Checks a Hugging Face model id (owner/name) for an adapter's base; throws what is wrong. */
export declare function checkBaseModel(id: string): Promise<void>;

/** A GGUF model (LLaMA family) from a URL, a Blob/File or bytes. */
export declare function loadModel(source: string | URL | Blob | ArrayBuffer | Uint8Array): Promise<Model>;

export interface LlamaConfig {
  architecture: string;
  n_layers: number;
  hidden: number;
  ffn: number;
  n_heads: number;
  n_kv_heads: number;
  head_dim: number;
  vocab: number;
  context_length: number;
  [key: string]: unknown;
}

/** Tuning options, as `edge-llm tune` (all optional). */
export interface TuneOptions {
  steps?: number;
  epochs?: number;
  lr?: number;
  cosine?: boolean;
  warmup?: number;
  lora_rank?: number;
  lora_alpha?: number;
  lora_dropout?: number;
  lora_targets?: Array<'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down'>;
  seq_len?: number;
  batch?: number;
  accum?: number;
  clip?: number;
  val_fraction?: number;
  eval_every?: number;
  patience?: number | null;
  seed?: number;
  memory_budget?: number | null;
  recompute?: boolean;
  /** Where the run trains: 'auto' (default) the GPU engine on a hardware WebGPU adapter,
   * the CPU engine on a software adapter (SwiftShader) or none; 'gpu'; 'cpu'. */
  device?: Device;
  /** Which layers train (`edge-llm tune --mode`). Partial and edge train windows of
   * layers on the GPU, one at a time; compress-then-tune needs a compressed model.
   * Default 'vanilla'. */
  mode?: TuneMode;
  /** Edge mode: an exit after every this many blocks, the last at the top (clamped to the
   * model's blocks; default 6). */
  exit_stride?: number;
  /** Edge mode: windows shallow to deep once ('reference', default), or a sweep then the
   * window that last lowered the whole model's loss on 4 probe rows the most per step
   * ('adaptive'). */
  window_schedule?: WindowSchedule;
  /** Edge mode: a window's learning rate is `lr` × (its last block ÷ the model's
   * blocks)^this (default 2; 0 trains every window alike). */
  window_lr_power?: number;
  /** Edge mode, reference order: a window's share of the steps is ∝ (its last block ÷ the
   * model's blocks)^this (default 0: equal phases). */
  window_steps_power?: number;
  /** Partial mode: the last this many blocks train (default 6; at most the model's). */
  partial_layers?: number;
}

export type Device = 'auto' | 'gpu' | 'cpu';
export type TuneMode = 'vanilla' | 'compress-then-tune' | 'partial' | 'edge';
export type WindowSchedule = 'reference' | 'adaptive';
export type VoteRule = 'max' | 'mean' | 'majority' | 'last';

/** A window of blocks a run trains: blocks `layers[0]..layers[1]` (0-based, end
 * excluded), its loss read at the exit after `exit_after` blocks (null: the model's head). */
export interface TuneWindow {
  index: number;
  layers: [number, number];
  exit_after: number | null;
}

/** The memory plan of a run (`edge-llm plan --json`'s report) and where it runs. */
export interface TunePlan {
  total_bytes: number;
  budget_bytes: number | null;
  changes: string[];
  seq_len: number;
  accum_factor: number;
  recompute: boolean;
  format: string;
  head_chunks: number;
  logits_chunk: number;
  buffers: number;
  by_category: Array<{ category: string; bytes: number }>;
  largest: Array<{ name: string; category: string; bytes: number; storage: boolean }>;
  max_storage_buffer_binding_size: number;
  max_buffer_size: number;
  mode: TuneMode;
  /** Where the run trains (the device rule's choice) and why, in plain words. On the
   * CPU the plan is of host memory: `total_bytes` and `by_category`, with `file_bytes`
   * and `limit_bytes`. */
  device: 'gpu' | 'cpu';
  device_reason: string;
  /** Block counts after which early exits sit (edge mode). */
  exits: number[];
  windows: TuneWindow[];
  window_schedule: WindowSchedule | null;
  /** Whether the model file is compressed. */
  compressed: boolean;
  /** CPU plans: the model file's bytes, held beside the plan in the same memory. */
  file_bytes?: number;
  /** CPU plans: what the tab gives the WebAssembly module (4 GiB less slack). */
  limit_bytes?: number;
  /** Bytes the trainer allocated (Tuner.plan only). */
  allocated_bytes?: number;
  [key: string]: unknown;
}

export type DataKind = 'auto' | 'text' | 'instruct' | 'mc';

export interface DataInput {
  text: string;
  /** The file name (for messages and format detection). */
  name?: string;
  kind?: DataKind;
  options?: TuneOptions;
}

export interface StepReport {
  step: number | null;
  /** Mean training loss of the step, at the window's exit in windowed modes. */
  loss: number;
  /** The window trained (an index into the plan's `windows`; windowed modes only). */
  window?: number;
  device: 'gpu' | 'cpu';
  lr: number;
  tokens_per_s: number;
  val_loss?: number | null;
  gpu_bytes: number;
  total_steps: number;
  stop: 'steps' | 'finished' | 'early_stopped';
  best_val_loss: number | null;
  [key: string]: unknown;
}

export interface PeftFiles {
  /** adapter_model.safetensors */
  safetensors: Uint8Array;
  /** adapter_config.json */
  config: string;
  /** exits.safetensors: the early exits (adapters with exits only; PEFT has none). */
  exits?: Uint8Array;
  /** All of them as one zip (stored), to unpack into the adapter's folder. */
  zip: Uint8Array;
}

export declare class Model {
  readonly inner: Raw.WebModel;
  readonly config: LlamaConfig;
  readonly fileBytes: number;
  /** What the model is: the Hugging Face id of a file recognised by its sha256 (else null),
   *  the file's own name (general.name) and the type of most of its weight bytes ("Q4_1"). */
  readonly identity: { hf_id: string | null; name: string | null; weights: string | null };
  /** Whether the file is a compressed model (compress-then-tune needs one). */
  readonly compressed: boolean;
  /** The policy a compressed model was made with (null: not compressed). */
  readonly policy: CompressionPolicy | null;
  tokenize(text: string): number[];
  tokenStrings(ids: number[]): string[];
  chatPrompt(text: string): string;
  checkData(input: DataInput): { kind: string; records: number; problems: Array<{ line: number; message: string }>; stats: Record<string, unknown> };
  plan(options?: TuneOptions): Promise<TunePlan>;
  tuner(input: DataInput): Promise<Tuner>;
  importAdapter(files: { safetensors: Uint8Array; config: string; exits?: Uint8Array | null }): Adapter;
  lm(options?: { adapter?: Adapter | null; maxLen?: number; device?: Device }): Promise<Lm>;
  /** A copy of the GGUF file's bytes. */
  bytes(): Uint8Array;
  /** Checks a policy document against this model; throws the first problem. */
  checkPolicy(policy: string | CompressionPolicy): CompressionPolicy;
  /** The cache key of the profile `profile()` would measure on this data and options. */
  profileKey(input: CompressInput): string;
  /** Measures the LUC sensitivity profile: calibration passes on `device` (default 'auto'),
   * the rest CPU work in the calling thread (use a worker). */
  profile(input: CompressInput & { onProgress?: CompressProgress }): Promise<ProfileResult>;
  /** Compresses the model as `edge-llm compress` does: calibration passes on `device`,
   * the rest CPU work in the calling thread (use a worker). */
  compress(input: CompressInput & {
    /** A policy document (text or object): overrides allocation, methods and widths. */
    policy?: string | CompressionPolicy | null;
    /** A profile from `profile()` or an earlier `compress()` (spares LUC the profiling). */
    profile?: ProfileResult | null;
    onProgress?: CompressProgress;
  }): Promise<CompressResult>;
  free(): void;
}

/** Compression options, as `edge-llm compress` (all optional; these are the defaults). */
export interface CompressOptions {
  /** Target mean sparsity (default 0; 2:4: 0.5 or 0). */
  sparsity?: number;
  /** Code width (uniform) or target mean bits per weight (luc): 2, 3, 4 or 8 (default 4). */
  bits?: number;
  /** 'luc' (per-layer numbers from the sensitivity profile, default) or 'uniform'. */
  allocation?: 'luc' | 'uniform';
  /** Pruning (default 'sparsegpt'). */
  method?: 'sparsegpt' | 'wanda' | 'magnitude';
  pattern?: 'unstructured' | '2:4';
  /** Dense-layer quantizer: GPTQ (RTN kept where better; default) or round-to-nearest. */
  quant?: 'gptq' | 'rtn';
  /** Columns per scale: 32 (default), 64 or 128. */
  group?: number;
  symmetric?: boolean;
  /** Calibration rows spread over the data (default 128) and tokens per row (default 256). */
  calib_rows?: number;
  seq_len?: number;
  /** Rows whose loss gradients make the profile's Fisher estimate, what LUC reads
   * (default 16; 0: none, LUC then reads the measured loss change or the output error). */
  fisher_rows?: number;
  /** Rows whose loss change is measured per block and level when profiling (default 0). */
  loss_rows?: number;
  /** Pruning method of the profile's levels (default 'wanda'). */
  profile_method?: 'sparsegpt' | 'wanda' | 'magnitude';
  /** How LUC picks per-block sparsity: least estimated loss change at the mean (default)
   * or the paper's reference rule. */
  sparsity_rule?: 'least-error' | 'reference';
}

export interface CompressInput {
  /** Calibration text: the user's data (plain text, instruction or multiple-choice JSONL). */
  text: string;
  name?: string;
  kind?: DataKind;
  options?: CompressOptions;
  /** Where profiling's calibration passes (Hessians, Fisher diagonal) run: 'auto' (default)
   * this thread's WebGPU device unless it is a software adapter (SwiftShader: the CPU
   * reference is much faster there) or there is none; 'gpu' the WebGPU device whatever it
   * is; 'cpu' the CPU reference. Each measures the same profile (the cache key does not
   * depend on it). */
  device?: 'auto' | 'gpu' | 'cpu';
}

/** `(stage, done, total)`; stages 'calibrate', 'fisher' and 'profile' (LUC), 'compress'. */
export type CompressProgress = (stage: 'calibrate' | 'fisher' | 'profile' | 'compress', done: number, total: number) => void;

/** A policy document (src/compress/policy.rs). */
export interface CompressionPolicy {
  version: number;
  layers: Array<{ sparsity: number; bits: number }>;
  pattern: 'unstructured' | '2:4';
  prune: 'magnitude' | 'wanda' | 'sparsegpt';
  quant: 'rtn' | 'gptq';
  group: number;
  symmetric: boolean;
  allocation: 'luc' | 'uniform' | 'manual';
}

export interface ProfileResult {
  /** The cache key (`profileKey`). */
  key: string;
  /** The measurements (per block, per level), as `edge-llm profile --json`'s `profile`. */
  profile: Record<string, unknown>;
  /** Per block: the sensitivity the policy reads (loss change, or output MSE without it). */
  prune_sensitivity: number[];
  quant_sensitivity: number[];
  seconds: number;
  /** Where the calibration passes ran. */
  device: 'gpu' | 'cpu';
}

export interface CompressedLayer {
  layer: number;
  sparsity: number;
  bits: number;
  /** 'quant', 'unstructured' or '2:4'. */
  format: string;
  /** Sparse value type ('int8', 'int4') when sparse. */
  values: string | null;
  f32_bytes: number;
  packed_bytes: number;
  prune_sensitivity: number | null;
  quant_sensitivity: number | null;
}

/** `edge-llm compress --json`'s object, plus what the page shows. */
export interface CompressSummary {
  policy: CompressionPolicy;
  file_bytes: number;
  original_file_bytes: number;
  projection_f32_bytes: number;
  projection_packed_bytes: number;
  /** Seconds compressing the projections (profile and Hessians excluded). */
  seconds: number;
  total_seconds: number;
  notes: string[];
  /** Choices made for the user (e.g. 2:4 with LUC allocates bits only). */
  messages: string[];
  tensors: Array<Record<string, unknown>>;
  layers: CompressedLayer[];
  options: CompressOptions;
  user_policy: boolean;
  /** The calibration data, and where its passes ran (`device`). */
  calibration: { name: string; rows: number; tokens: number; device: 'gpu' | 'cpu' };
  /** The profile LUC used: measured by this call or given. */
  profile_info: { key: string; measured: boolean; seconds: number; base_loss: number | null; dloss: boolean } | null;
}

export interface CompressResult {
  /** The compressed GGUF file (`loadModel` takes it; `edge-llm` reads it). */
  bytes: Uint8Array;
  summary: CompressSummary;
  /** The profile this call measured (null when given one or not LUC). */
  profile: ProfileResult | null;
}

export declare const RUN_REPORT_VERSION: 1;

/** What `runReport` assembles (every part may be null). */
export interface RunReport {
  format: 'edge-llm run report';
  version: typeof RUN_REPORT_VERSION;
  created: string;
  model: { name: string; file_bytes: number; config: LlamaConfig; compressed: boolean; policy: CompressionPolicy | null; [key: string]: unknown } | null;
  compression: CompressSummary | null;
  data: { name: string; kind: string; source?: string; stats?: Record<string, unknown>; [key: string]: unknown } | null;
  tuning: {
    options: TuneOptions;
    mode: TuneMode;
    device: 'gpu' | 'cpu';
    steps: number;
    total_steps: number;
    state?: string;
    losses: Array<{ step: number; loss: number; window: number | null }>;
    validation: Array<{ step: number; loss: number }>;
    windows?: TuneWindow[];
    exits?: number[];
    plan?: TunePlan | null;
    seconds?: number;
    tokens_per_s?: number | null;
    [key: string]: unknown;
  } | null;
  evaluation: {
    perplexity?: Array<PerplexityResult & { source: string; text: string }>;
    accuracy?: (Omit<McResult, 'questions'> & { source: string }) | null;
    chat?: (GenerateResult & { source: string }) | null;
    [key: string]: unknown;
  } | null;
  gpu: GpuInfo | null;
  [key: string]: unknown;
}

/** A run report from the parts the caller has (the page's "Download run report"). */
export declare function runReport(parts?: Partial<Omit<RunReport, 'format' | 'version' | 'created'>>): RunReport;

export declare class Tuner {
  readonly inner: Raw.WebTuner;
  readonly plan: TunePlan;
  readonly data: Record<string, unknown>;
  readonly totalSteps: number;
  readonly step: number;
  readonly gpuBytes: number;
  /** Where the run trains, and why in plain words (the device rule). */
  readonly device: 'gpu' | 'cpu';
  readonly deviceReason: string;
  runStep(): Promise<StepReport>;
  run(options?: { onStep?: (report: StepReport) => void; signal?: AbortSignal }): Promise<StepReport | null>;
  validationLoss(): Promise<number | null>;
  checkpoint(): Promise<Uint8Array>;
  resume(bytes: Uint8Array): Promise<number>;
  adapter(): Promise<Adapter>;
  /** `baseModel`: the Hugging Face id (owner/name) adapter_config.json names as the base. */
  exportAdapter(baseModel?: string): Promise<PeftFiles>;
  free(): void;
}

export declare class Adapter {
  readonly inner: Raw.WebAdapter;
  readonly rank: number;
  readonly exits: number[];
  /** `baseModel`: the Hugging Face id (owner/name) adapter_config.json names as the base. */
  files(baseModel?: string): PeftFiles;
  free(): void;
}

export interface PerplexityResult {
  perplexity: number;
  mean_nll: number;
  tokens: number;
  seconds: number;
}

export interface McResult {
  /** Accuracy of the model, or of the chosen vote with early exits. */
  accuracy: number;
  n: number;
  correct: number;
  seconds: number;
  device: 'gpu' | 'cpu';
  questions: Array<{
    question: string; choices: string[]; answer: number; predicted: number;
    /** Summed log-likelihood per choice (with exits: at the last exit). */
    scores: number[];
    /** With exits: each exit's answer. */
    exit_predictions?: number[];
  }>;
  /** With exits: the rule that chose `predicted`. */
  vote?: VoteRule;
  /** With exits: each exit's accuracy on its own, shallow to deep. */
  exits?: Array<{ after: number; accuracy: number; correct: number }>;
  /** With exits: every rule's accuracy. */
  votes?: Array<{ rule: VoteRule; accuracy: number; correct: number }>;
  /** With exits: the error-weighted rule fitted leave-one-out (each exit weighted by its
   *  accuracy on the other questions) and its answer per question. */
  fitted?: { accuracy: number; correct: number; predictions: number[] };
}

export interface GenerateResult {
  text: string;
  tokens: number;
  prompt_tokens: number;
  seconds: number;
  prefill_seconds: number;
  tokens_per_s: number;
  decode_tokens_per_s: number;
  device: 'gpu' | 'cpu';
  /** With exits: the rule the exits' distributions were combined by. */
  vote: VoteRule | null;
}

export declare class Lm {
  readonly inner: Raw.WebLm;
  readonly gpuBytes: number;
  /** Where the model runs, and why in plain words (the device rule). */
  readonly device: 'gpu' | 'cpu';
  readonly deviceReason: string;
  readonly maxLen: number;
  readonly hasAdapter: boolean;
  /** Block counts after which the adapter's early exits sit (empty: none). */
  readonly exits: number[];
  perplexity(text: string, options?: { maxTokens?: number; onProgress?: (done: number, total: number) => void }): Promise<PerplexityResult>;
  evalMc(jsonl: string, options?: { limit?: number; vote?: VoteRule; onProgress?: (done: number, total: number, correct: number) => void }): Promise<McResult>;
  generate(prompt: string, options?: {
    maxTokens?: number; temperature?: number; topP?: number; seed?: number;
    /** Wrap the prompt in the model's ChatML template (default true). */
    chat?: boolean;
    /** With early exits: how their distributions are combined (default 'max'). */
    vote?: VoteRule;
    onText?: (piece: string) => void;
  }): Promise<GenerateResult>;
  free(): void;
}
