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
  loss: number;
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
}

export declare class Model {
  readonly inner: Raw.WebModel;
  readonly config: LlamaConfig;
  readonly fileBytes: number;
  tokenize(text: string): number[];
  tokenStrings(ids: number[]): string[];
  chatPrompt(text: string): string;
  checkData(input: DataInput): { kind: string; records: number; problems: Array<{ line: number; message: string }>; stats: Record<string, unknown> };
  plan(options?: TuneOptions): Promise<Record<string, unknown>>;
  tuner(input: DataInput): Promise<Tuner>;
  importAdapter(files: { safetensors: Uint8Array; config: string }): Adapter;
  lm(options?: { adapter?: Adapter | null; maxLen?: number }): Promise<Lm>;
  free(): void;
}

export declare class Tuner {
  readonly inner: Raw.WebTuner;
  readonly plan: Record<string, unknown>;
  readonly data: Record<string, unknown>;
  readonly totalSteps: number;
  readonly step: number;
  readonly gpuBytes: number;
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
  accuracy: number;
  n: number;
  correct: number;
  seconds: number;
  questions: Array<{ question: string; choices: string[]; answer: number; predicted: number; scores: number[] }>;
}

export interface GenerateResult {
  text: string;
  tokens: number;
  prompt_tokens: number;
  seconds: number;
  prefill_seconds: number;
  tokens_per_s: number;
  decode_tokens_per_s: number;
}

export declare class Lm {
  readonly inner: Raw.WebLm;
  readonly gpuBytes: number;
  readonly maxLen: number;
  readonly hasAdapter: boolean;
  perplexity(text: string, options?: { maxTokens?: number; onProgress?: (done: number, total: number) => void }): Promise<PerplexityResult>;
  evalMc(jsonl: string, options?: { limit?: number; onProgress?: (done: number, total: number, correct: number) => void }): Promise<McResult>;
  generate(prompt: string, options?: {
    maxTokens?: number; temperature?: number; topP?: number; seed?: number;
    /** Wrap the prompt in the model's ChatML template (default true). */
    chat?: boolean;
    onText?: (piece: string) => void;
  }): Promise<GenerateResult>;
  free(): void;
}
