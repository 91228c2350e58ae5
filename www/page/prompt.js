// The prompt section: the text tokenized live (optionally in the ChatML template), each
// token shown as a chip with its id.

import { $, showError, messageOf } from './ui.js';
import { model } from './state.js';

/// A token's text with invisible characters made visible.
function visible(s) {
  return s.replaceAll(' ', '·').replaceAll('\n', '↵').replaceAll('\t', '⇥') || '∅';
}

export function tokenize() {
  if (!model) return;
  const user = $('prompt').value;
  const tokens = $('tokens');
  try {
    const text = $('chatml').checked ? model.chatPrompt(user) : user;
    const ids = model.tokenize(text);
    const strings = model.tokenStrings(ids);
    tokens.replaceChildren(...ids.map((id, i) => {
      const chip = document.createElement('span');
      chip.className = 'token';
      if (/^<\|.*\|>$/.test(strings[i])) chip.classList.add('special');
      chip.title = `id ${id}: ${JSON.stringify(strings[i])}`;
      const t = document.createElement('span');
      t.className = 'text';
      t.textContent = visible(strings[i]);
      const n = document.createElement('span');
      n.className = 'id';
      n.textContent = id;
      chip.append(t, n);
      return chip;
    }));
    $('token-count').textContent = `${ids.length} token${ids.length === 1 ? '' : 's'}`;
    $('token-ids').textContent = `[${ids.join(', ')}]`;
    showError('tokenizer-error', '');
  } catch (e) {
    tokens.replaceChildren();
    $('token-count').textContent = 'Tokenization failed.';
    showError('tokenizer-error', messageOf(e));
  }
}

export function setupPrompt() {
  let timer = 0;
  $('prompt').addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(tokenize, 120); });
  $('chatml').addEventListener('change', tokenize);
}
