// Types of index.js. The raw wasm-bindgen API's types are ./pkg/edge_llm.d.ts.
import type * as Raw from './pkg/edge_llm.js';

export declare const raw: typeof Raw;

/** Loads the WebAssembly module once; `wasm` overrides where edge_llm_bg.wasm is fetched from. */
export declare function init(wasm?: string | URL | Request | Response | BufferSource | WebAssembly.Module): Promise<unknown>;

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
  /** Which layers train (`edge-llm tune --mode`). Partial and edge train windows of
   * layers on the CPU (the GPU engine does not run them yet); compress-then-tune needs a
   * compressed model. Default 'vanilla'. */
  mode?: TuneMode;
  /** Edge mode: an exit after every this many blocks, the last at the top (clamped to the
   * model's blocks; default 6). */
  exit_stride?: number;
  /** Edge mode: windows shallow to deep once ('reference', default), or a sweep then the
   * window whose exit loss fell fastest ('adaptive'). */
  window_schedule?: WindowSchedule;
  /** Partial mode: the last this many blocks train (default 6; at most the model's). */
  partial_layers?: number;
}

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
  head_parts: number;
  logits_chunk: number;
  buffers: number;
  by_category: Array<{ category: string; bytes: number }>;
  largest: Array<{ name: string; category: string; bytes: number; storage: boolean }>;
  max_storage_buffer_binding_size: number;
  max_buffer_size: number;
  mode: TuneMode;
  /** 'cpu' for windowed modes: then the plan is what the largest window would need on the
   * GPU, not what the run holds. */
  device: 'gpu' | 'cpu';
  /** Block counts after which early exits sit (edge mode). */
  exits: number[];
  windows: TuneWindow[];
  window_schedule: WindowSchedule | null;
  /** Whether the model file is compressed. */
  compressed: boolean;
  /** Bytes the trainer allocated (Tuner.plan only; 0 on the CPU). */
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
}

export declare class Model {
  readonly inner: Raw.WebModel;
  readonly config: LlamaConfig;
  readonly fileBytes: number;
  /** Whether the file is a compressed model (compress-then-tune needs one). */
  readonly compressed: boolean;
  tokenize(text: string): number[];
  tokenStrings(ids: number[]): string[];
  chatPrompt(text: string): string;
  checkData(input: DataInput): { kind: string; records: number; problems: Array<{ line: number; message: string }>; stats: Record<string, unknown> };
  plan(options?: TuneOptions): Promise<TunePlan>;
  tuner(input: DataInput): Promise<Tuner>;
  importAdapter(files: { safetensors: Uint8Array; config: string; exits?: Uint8Array | null }): Adapter;
  lm(options?: { adapter?: Adapter | null; maxLen?: number }): Promise<Lm>;
  free(): void;
}

export declare class Tuner {
  readonly inner: Raw.WebTuner;
  readonly plan: TunePlan;
  readonly data: Record<string, unknown>;
  readonly totalSteps: number;
  readonly step: number;
  readonly gpuBytes: number;
  readonly device: 'gpu' | 'cpu';
  runStep(): Promise<StepReport>;
  run(options?: { onStep?: (report: StepReport) => void; signal?: AbortSignal }): Promise<StepReport | null>;
  validationLoss(): Promise<number | null>;
  checkpoint(): Promise<Uint8Array>;
  resume(bytes: Uint8Array): Promise<number>;
  adapter(): Promise<Adapter>;
  exportAdapter(): Promise<PeftFiles>;
  free(): void;
}

export declare class Adapter {
  readonly inner: Raw.WebAdapter;
  readonly rank: number;
  readonly exits: number[];
  files(): PeftFiles;
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
