// The tuning data: a built-in set (served beside the page) or the user's file, its preview
// and what preparation made of it. Compression and evaluation read the same data.

import { $, showError, kib } from './ui.js';
import { tune } from './state.js';

// Built-in data served beside the page (scripts/run.sh links data/ into www/data/).
const BUILTIN = {
  'builtin:arc': { url: 'data/arc-easy/train.jsonl', name: 'arc-easy/train.jsonl', kind: 'mc' },
  // The whole 4.7 MB takes long to tokenize in a tab; a slice is plenty for a demo run.
  'builtin:shakespeare': { url: 'data/shakespeare/train.txt', name: 'shakespeare/train.txt', kind: 'text', limit: 256 * 1024 },
};

export function dataSource() {
  return document.querySelector('input[name=data-source]:checked').value;
}

/// The current data as {source, name, kind, text}; fetches built-in data once.
export async function currentData() {
  const source = dataSource();
  if (source === 'file') {
    if (!tune.file) throw new Error('Choose a data file (.txt, .jsonl) above, or pick a built-in data set.');
    return { source, name: tune.file.name, kind: $('data-kind').value, text: tune.file.text };
  }
  return builtinData(source);
}

/// A built-in data set (fetched once).
export async function builtinData(source) {
  const b = BUILTIN[source];
  if (!(source in tune.builtinText)) {
    const r = await fetch(b.url);
    if (!r.ok) {
      throw new Error(`Could not fetch ${b.url} (HTTP ${r.status}). Start the page with scripts/run.sh, ` +
        'which places the built-in data there, or use your own file.');
    }
    let text = await r.text();
    if (b.limit && text.length > b.limit) {
      const cut = text.lastIndexOf('\n', b.limit);
      text = text.slice(0, cut > 0 ? cut + 1 : b.limit);
    }
    tune.builtinText[source] = text;
  }
  return { source, name: b.name, kind: b.kind, text: tune.builtinText[source] };
}

export function showPreview(text) {
  const lines = text.split('\n').slice(0, 12).map((l) => (l.length > 300 ? `${l.slice(0, 300)}…` : l));
  $('data-preview').textContent = lines.join('\n');
  $('data-preview-box').hidden = false;
}

function showProblems(problems) {
  const box = $('data-problems-box');
  if (!problems.length) { box.hidden = true; return; }
  $('data-problems-title').textContent =
    `${problems.length} line${problems.length === 1 ? '' : 's'} cannot be used and will be skipped ` +
    '(fix them in the file and pick it again to use them):';
  const shown = problems.slice(0, 50).map((p) => {
    const li = document.createElement('li');
    li.textContent = `line ${p.line}: ${p.message}`;
    return li;
  });
  if (problems.length > 50) {
    const li = document.createElement('li');
    li.textContent = `… and ${problems.length - 50} more`;
    shown.push(li);
  }
  $('data-problems').replaceChildren(...shown);
  box.hidden = false;
}

/// What preparation made of the data: records, rows, truncation, and the unusable lines.
export function showDataInfo(info, data) {
  tune.dataInfo = info;
  const s = info.stats;
  $('data-status').textContent = `${data.name}: ` +
    (info.kind === 'text'
      ? `${kib(data.text.length)} of plain text → `
      : `${info.records} ${info.kind} record${info.records === 1 ? '' : 's'} (${kib(data.text.length)}) → `) +
    `${s.train_rows} training rows (${s.train_targets} target tokens), ${s.val_rows} validation rows` +
    `${s.truncated ? `; ${s.truncated} cut to the sequence length` : ''}` +
    `${s.dropped ? `; ${s.dropped} dropped (no target left)` : ''}.`;
  $('data-status').dataset.trainRows = String(s.train_rows);
  showPreview(data.text);
  showProblems(info.problems);
  showError('data-error', '');
}
