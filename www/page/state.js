// What the sections share: the wasm wrapper, the loaded model, the tuning run, the
// evaluation results and the compression job, and the one worker that tuning, evaluation
// and chat talk to. Imports are read-only, so the page's globals change through setters.

let wasm = null;   // the edge-llm wrapper module (./edge-llm.js), once initialised
let model = null;  // the loaded WebModel
let modelInfo = null;  // {name, bytes, config, compressed, policy} of the loaded model
let gpuDescription = null;  // gpuInfo() of the page's adapter, for the run report

export { wasm, model, modelInfo, gpuDescription };
export const setWasm = (w) => { wasm = w; };
export const setModel = (m) => { model = m; };
export const setModelInfo = (i) => { modelInfo = i; };
export const setGpuDescription = (d) => { gpuDescription = d; };

export const tune = {
  worker: null,        // the client of the page's worker (worker-client.js): tuning, evaluation, chat
  state: 'idle',       // idle | starting | running | pausing | paused | cancelling | finishing | done | cancelled | error
  ready: false,        // data and plan checked for the current settings
  created: false,      // the worker holds a tuner
  run: null,           // {model, data, options, save_every}: what defines the run
  step: 0,
  total: 0,
  plan: null,
  device: 'gpu',       // where the run trains: 'gpu' or 'cpu' (the engine rule's choice)
  deviceReason: '',    // why, in plain words
  history: { train: [], val: [] },
  elapsedMs: 0,        // training time of earlier sessions of this run
  sessionStart: 0,
  sessionSteps: 0,
  sessionMs: 0,
  lastTokensPerS: 0,
  file: null,          // {name, text} of the user's data file
  builtinText: {},
  checkSeq: 0,
  speeds: [],          // [step, tokens/s, ms] of this session's steps (the run report's timings)
  dataInfo: null,      // what preparation made of the data (the run report's `data.stats`)
  keptId: null,        // the finished adapter of this run, kept in browser storage (storage.js)
  probe: null,         // {key, tokens_per_s} of the last speed probe (estimate.js)
  probing: null,       // the probe running in the worker (a promise), which a run or evaluation awaits
};

/// The states in which a run holds the form (its settings and data are the run's).
export const BUSY = ['starting', 'running', 'pausing', 'paused', 'cancelling', 'finishing'];
/// The states in which the worker is busy with the run.
export const WORKING = ['starting', 'running', 'pausing', 'cancelling', 'finishing'];

// For the browser console and the page test: the run's state, loss history included.
window.edgeLlmTune = tune;
/// For the end-to-end tests: lose the tuning worker's GPU device as a driver reset would.
window.edgeLlmDebug = { loseGpu: () => call('debugLoseGpu') };

/// A request to the page's worker (tune.worker, a client from worker-client.js).
export async function call(op, args = {}, transfer = []) {
  return tune.worker.call(op, args, transfer);
}

export function elapsedMs() {
  return tune.elapsedMs + (['running', 'pausing', 'cancelling', 'finishing'].includes(tune.state)
    ? performance.now() - tune.sessionStart : 0);
}

// Evaluation and chat run in the same worker as tuning, on a model built with the chosen
// adapter (the worker rebuilds it only when that changes).
export const evalState = { busy: false, mcQuestions: null, validationText: null, pieces: 0,
  // The latest results, for the run report.
  results: { perplexity: [], accuracy: null, chat: null } };

// Profiling and compression run in a worker of their own (another instance of worker.js):
// CPU work that blocks its worker until it ends, so Cancel terminates that worker and the
// tuning worker (a paused run, the tuned adapter, the evaluation model) keeps everything.
export const cmp = {
  state: 'idle',       // idle | running | done | cancelled | error
  job: null,           // {call, terminate} of the running job's worker
  original: null,      // {name, load} of the uncompressed model compression reads
  policy: null,        // {name, text} of the policy file picked
  summary: null,       // the last compression's summary
  profile: null,       // the last profile shown
  file: null,          // {name, blob} of the compressed model
  startedAt: 0,
  stage: null,         // {name, done, total, startedAt}
};

// For the browser console and the tests.
window.edgeLlmCompress = cmp;
