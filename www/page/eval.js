// The evaluate-and-chat section: perplexity, ARC-Easy accuracy and chat with the base model,
// the tuned adapter or one from disk. They run in the same worker as tuning, on a model
// built with the chosen adapter (the worker rebuilds it only when that changes).

import { $, showError, messageOf, mib, fillTable, clock } from './ui.js';
import { modelInfo, evalState, tune, call } from './state.js';
import { updateEvalControls } from './controls.js';
import { currentData } from './settings.js';

const evalSource = () => document.querySelector('input[name=eval-source]:checked').value;

const SOURCE_LABELS = { base: 'base model', tuned: 'tuned adapter', file: 'adapter from disk' };

/// The engine setting of the tune section, which evaluation follows too.
const device = () => $('opt-device').value;

function showEvalModel(info) {
  const where = info.lm_device === 'cpu'
    ? `on ${info.lm_device_reason}`
    : `${mib(info.lm_bytes)} on the GPU (KV cache for ${info.max_len} positions; ${info.lm_device_reason})`;
  const parts = [`Evaluating with the ${SOURCE_LABELS[info.source]} ${where}`];
  parts.push(info.trainer_bytes
    ? `; the paused run's trainer holds ${mib(info.trainer_bytes)} more.`
    : '.');
  if (info.lm_exits && info.lm_exits.length) {
    parts.push(` Its early exits (after blocks ${info.lm_exits.join(', ')}) run with it: accuracy and ` +
      'chat vote over them; perplexity reads the model\'s own head (the exits are not applied there).');
  }
  const el = $('eval-model-status');
  el.dataset.info = parts.join('');
  el.dataset.lmBytes = String(info.lm_bytes);
  el.dataset.exits = (info.lm_exits || []).join(',');
  el.dataset.device = info.lm_device ?? '';
  el.textContent = el.dataset.info;
}

/// Runs `fn` with the evaluation controls disabled, showing any error.
async function evalTask(fn) {
  if (evalState.busy) return;
  evalState.busy = true;
  showError('eval-error', '');
  updateEvalControls();
  try {
    // A speed probe in the worker ends first.
    if (tune.probing) await tune.probing;
    await fn();
  } catch (e) {
    showError('eval-error', messageOf(e));
  } finally {
    evalState.busy = false;
    updateEvalControls();
  }
}

async function pplText() {
  const src = document.querySelector('input[name=ppl-source]:checked').value;
  if (src === 'pasted') {
    const text = $('ppl-text').value;
    if (!text.trim()) throw new Error('Paste a text to score first.');
    return { name: 'the pasted text', text };
  }
  if (src === 'validation') {
    if (!evalState.validationText) {
      const r = await fetch('data/shakespeare/validation.txt');
      if (!r.ok) throw new Error(`could not fetch data/shakespeare/validation.txt (HTTP ${r.status}); start the page with scripts/run.sh`);
      // Only the first tokens are scored: a slice is plenty.
      evalState.validationText = (await r.text()).slice(0, 64 * 1024);
    }
    return { name: 'Shakespeare validation', text: evalState.validationText };
  }
  const data = await currentData();
  return { name: data.name, text: data.text };
}

async function onPerplexity() {
  await evalTask(async () => {
    const maxTokens = Number($('ppl-max').value);
    if (!Number.isInteger(maxTokens) || maxTokens < 2) throw new Error('Tokens must be a whole number of at least 2.');
    const { name, text } = await pplText();
    const source = evalSource();
    const r = await ticking('ppl-status', `Scoring up to ${maxTokens} tokens of ${name} with the ${SOURCE_LABELS[source]}`,
      () => call('perplexity', { source, text, max_tokens: maxTokens, device: device() }));
    showEvalModel(r);
    const line = `${SOURCE_LABELS[source]}: perplexity ${r.perplexity.toFixed(3)} on ${name} ` +
      `(${r.tokens} tokens, ${r.seconds.toFixed(1)} s)`;
    $('ppl-status').textContent = line;
    $('ppl-status').dataset.perplexity = String(r.perplexity);
    const li = document.createElement('li');
    li.textContent = line;
    li.dataset.perplexity = String(r.perplexity);
    li.dataset.source = source;
    li.dataset.tokens = String(r.tokens);
    $('ppl-history').append(li);
    evalState.results.perplexity.push({ source, text: name, model: modelInfo?.name, perplexity: r.perplexity,
      mean_nll: r.mean_nll, tokens: r.tokens, seconds: r.seconds });
  });
}

const LETTERS = 'ABCDEFGHIJ';

async function onMc() {
  await evalTask(async () => {
    const limit = Number($('mc-n').value);
    if (!Number.isInteger(limit) || limit < 1) throw new Error('Questions must be a whole number of at least 1.');
    if (!evalState.mcQuestions) {
      const r = await fetch('data/arc-easy/validation.jsonl');
      if (!r.ok) throw new Error(`could not fetch data/arc-easy/validation.jsonl (HTTP ${r.status}); start the page with scripts/run.sh`);
      evalState.mcQuestions = await r.text();
    }
    const source = evalSource();
    delete $('mc-status').dataset.accuracy;
    const r = await ticking('mc-status', `Scoring ${limit} questions with the ${SOURCE_LABELS[source]}: 0 of ${limit}`,
      () => call('evalMc', { source, jsonl: evalState.mcQuestions, limit, vote: $('eval-vote').value, device: device() }));
    showEvalModel(r);
    const voted = r.vote ? ` voted by ${r.vote} over exits after blocks ${r.exits.map((e) => e.after).join(', ')} (${r.device.toUpperCase()})` : '';
    $('mc-status').textContent = `${SOURCE_LABELS[source]}${voted}: accuracy ${r.accuracy.toFixed(3)} ` +
      `(${r.correct} of ${r.n} right, ${r.seconds.toFixed(1)} s; chance is about 0.25)`;
    $('mc-status').dataset.accuracy = String(r.accuracy);
    const { questions, ...accuracy } = r;
    evalState.results.accuracy = { ...accuracy, source, model: modelInfo?.name, data: 'arc-easy/validation.jsonl' };
    showExitAccuracy(r);
    const rows = r.questions.map((q, i) => {
      const tr = document.createElement('tr');
      const right = q.predicted === q.answer;
      tr.className = right ? 'right' : 'wrong';
      tr.dataset.predicted = String(q.predicted);
      tr.dataset.answer = String(q.answer);
      if (q.exit_predictions) {
        tr.title = `each exit's answer: ${q.exit_predictions.map((p, k) =>
          `after block ${r.exits[k].after}: ${LETTERS[p]}`).join(', ')}`;
      }
      const cells = [String(i + 1), q.question,
        `${LETTERS[q.predicted]}. ${q.choices[q.predicted]}`,
        `${LETTERS[q.answer]}. ${q.choices[q.answer]}`, right ? '✓' : '✗'];
      tr.append(...cells.map((c) => { const td = document.createElement('td'); td.textContent = c; return td; }));
      return tr;
    });
    $('mc-table').querySelector('tbody').replaceChildren(...rows);
    $('mc-table').hidden = false;
  });
}

/// With early exits: each exit's accuracy on its own and each voting rule's.
function showExitAccuracy(r) {
  const table = $('mc-exits');
  if (!r.exits) { table.hidden = true; return; }
  const acc = (a, c) => `${a.toFixed(3)} (${c} of ${r.n})`;
  fillTable(table, [
    ...r.exits.map((e) => [`exit-${e.after}`, `Exit after block ${e.after} alone`, acc(e.accuracy, e.correct)]),
    ...r.votes.map((v) => [`vote-${v.rule}`, `Vote: ${v.rule}${v.rule === r.vote ? ' (chosen)' : ''}`, acc(v.accuracy, v.correct)]),
    ['vote-fitted', 'Vote: exits weighted by their accuracy on the other questions', acc(r.fitted.accuracy, r.fitted.correct)],
  ]);
  for (const tr of table.querySelectorAll('tbody tr')) {
    const [kind, what] = tr.dataset.key.split('-');
    const item = kind === 'exit' ? r.exits.find((e) => String(e.after) === what)
      : what === 'fitted' ? r.fitted : r.votes.find((v) => v.rule === what);
    tr.dataset.accuracy = String(item.accuracy);
    if (kind === 'vote' && what === r.vote) tr.classList.add('chosen');
    // A bar of the accuracy on a track of 1, the exits' in one colour and the votes' in
    // another, so the best reads at a glance.
    const track = document.createElement('span');
    track.className = `acc-bar ${kind}`;
    const fill = document.createElement('span');
    fill.className = 'fill';
    fill.style.width = `${Math.max(0, Math.min(1, item.accuracy)) * 100}%`;
    track.append(fill);
    tr.querySelector('td').prepend(track);
  }
}

async function onChat() {
  await evalTask(async () => {
    const prompt = $('chat-input').value;
    if (!prompt.trim()) throw new Error('Type a message first.');
    const num = (id, label, min, int) => {
      const v = Number($(id).value);
      if (!Number.isFinite(v) || v < min || (int && !Number.isInteger(v))) {
        throw new Error(`${label} must be ${int ? 'a whole number' : 'a number'} of at least ${min}.`);
      }
      return v;
    };
    const options = {
      temperature: num('chat-temp', 'Temperature', 0, false),
      topP: num('chat-topp', 'Top-p', 0.01, false),
      maxTokens: num('chat-max', 'Max new tokens', 1, true),
      seed: num('chat-seed', 'Seed', 0, true),
      chat: $('chat-template').checked,
      vote: $('eval-vote').value,
    };
    if (options.topP > 1) throw new Error('Top-p must be at most 1.');
    const out = $('chat-output');
    const you = document.createElement('span');
    you.className = 'prompt';
    you.textContent = `You: ${prompt}`;
    const reply = document.createElement('span');
    reply.id = 'chat-reply';
    out.replaceChildren(you, reply);
    evalState.pieces = 0;
    out.dataset.pieces = '0';
    const source = evalSource();
    const r = await ticking('chat-status', `Generating with the ${SOURCE_LABELS[source]}`,
      () => call('generate', { source, prompt, options, device: device() }));
    showEvalModel(r);
    reply.textContent = r.text;  // the streamed pieces joined, made exact
    const st = $('chat-status');
    st.textContent = `${chatSpeed(r)}${r.vote ? `, sampled from the exits' distributions voted by ${r.vote} on the ${r.device.toUpperCase()}` : ''}.`;
    st.dataset.vote = r.vote ?? '';
    st.dataset.tokens = String(r.tokens);
    st.dataset.tokensPerS = String(r.tokens_per_s);
    st.dataset.decodeTokensPerS = String(r.decode_tokens_per_s);
    evalState.results.chat = { ...r, source, model: modelInfo?.name, prompt };
  });
}

/// Chat's speed in words, with no rate that is not one: the reply's tokens after the first
/// (the first waits for the whole prompt), or the time alone for a one-token reply.
function chatSpeed(r) {
  const rate = (t) => (t < 10 ? t.toFixed(2) : t.toFixed(1));
  const time = (s) => (s < 0.1 ? `${Math.max(1, Math.round(s * 1000))} ms` : `${s.toFixed(2)} s`);
  const prompt = `the ${r.prompt_tokens}-token prompt took ${time(r.prefill_seconds)}`;
  if (r.tokens === 0) return `No reply: the model ended its turn at once (${time(r.seconds)})`;
  if (r.decode_tokens_per_s > 0) {
    return `${r.tokens} tokens in ${time(r.seconds)}: ${rate(r.decode_tokens_per_s)} tokens/s after the first (${prompt})`;
  }
  return `${r.tokens} token${r.tokens === 1 ? '' : 's'} in ${time(r.seconds)} (${prompt})`;
}

/// Runs `work` with `id`'s status saying what runs and for how long, from its first moment;
/// progress events replace the count (onEvalEvent) and keep the clock.
async function ticking(id, what, work) {
  const el = $(id);
  const t0 = performance.now();
  el.dataset.what = what;
  el.dataset.count = '';
  const show = () => {
    el.textContent = `${el.dataset.count ? `${what.replace(/: 0 of \d+$/, '')}: ${el.dataset.count}` : what}` +
      ` · ${clock(performance.now() - t0)}…`;
  };
  show();
  const timer = setInterval(show, 1000);
  showers.set(id, show);
  try {
    return await work();
  } catch (e) {
    el.textContent = `${what.replace(/: 0 of \d+$/, '')}: stopped (the reason is above).`;
    throw e;
  } finally {
    clearInterval(timer);
    showers.delete(id);
  }
}
const showers = new Map();

export function onEvalEvent(m) {
  if (m.event === 'token') {
    const reply = $('chat-reply');
    if (reply) reply.textContent += m.text;
    evalState.pieces += 1;
    $('chat-output').dataset.pieces = String(evalState.pieces);
    const st = $('chat-status');
    st.dataset.count = `${$('chat-reply')?.textContent.length ?? 0} characters so far`;
    showers.get('chat-status')?.();
  } else if (m.what === 'perplexity') {
    $('ppl-status').dataset.count = `${m.done} of ${m.total} tokens`;
    showers.get('ppl-status')?.();
  } else if (m.what === 'mc') {
    $('mc-status').dataset.count = `${m.done} of ${m.total} questions, ${m.correct} right so far`;
    showers.get('mc-status')?.();
  }
}

async function onAdapterFiles(e) {
  const files = Array.from(e.target.files);
  const isExits = (f) => /exits[^/]*\.safetensors$/.test(f.name);
  const st = files.find((f) => f.name.endsWith('.safetensors') && !isExits(f));
  const cfg = files.find((f) => f.name.endsWith('.json'));
  const ex = files.find(isExits);
  await evalTask(async () => {
    if (!st || !cfg) {
      throw new Error('Pick both files of the PEFT adapter: adapter_model.safetensors and adapter_config.json ' +
        '(and exits.safetensors for an adapter with early exits).');
    }
    const safetensors = new Uint8Array(await st.arrayBuffer());
    const exits = ex ? new Uint8Array(await ex.arrayBuffer()) : null;
    const r = await call('loadAdapter', { safetensors, config: await cfg.text(), exits, name: st.name },
      [safetensors.buffer, ...(exits ? [exits.buffer] : [])]);
    const radio = document.querySelector('input[name=eval-source][value=file]');
    radio.disabled = false;
    radio.checked = true;
    $('eval-model-status').dataset.info = `Adapter ${r.name} loaded (rank ${r.rank}` +
      `${r.exits.length ? `, early exits after blocks ${r.exits.join(', ')}` : ''}); the model is built on first use.`;
  });
}

export function setupEval() {
  $('ppl-run').addEventListener('click', onPerplexity);
  $('mc-run').addEventListener('click', onMc);
  $('chat-send').addEventListener('click', onChat);
  $('adapter-files').addEventListener('change', onAdapterFiles);
  $('ppl-text').addEventListener('input', () => {
    document.querySelector('input[name=ppl-source][value=pasted]').checked = true;
  });
  updateEvalControls();
}

/// A new model: adapters from disk and results belong to the old one.
export function evalModelLoaded() {
  const radio = document.querySelector('input[name=eval-source][value=file]');
  radio.disabled = true;
  document.querySelector('input[name=eval-source][value=base]').checked = true;
  delete $('eval-model-status').dataset.info;
  $('ppl-history').replaceChildren();
  updateEvalControls();
}
