// Shared UI helpers: element lookup, error boxes, key-value tables and number formats.

export const $ = (id) => document.getElementById(id);

export function showError(id, message) {
  const box = $(id);
  box.textContent = message;
  box.hidden = !message;
}

/// The message of anything thrown (JsError, RuntimeError from a Rust panic, fetch errors).
export function messageOf(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    return `internal error in the WebAssembly module (${e.message}); details are in the browser console`;
  }
  return (e && e.message) || String(e);
}

/// A message of the engine in the page's words: without the error's category prefix, with a
/// capital letter.
export function plain(message) {
  const m = message.replace(/^invalid argument: /, '');
  return m.charAt(0).toUpperCase() + m.slice(1);
}

/// A file size as people read it (decimal megabytes).
export function megabytes(bytes) {
  const mb = bytes / 1e6;
  return `${mb < 10 ? mb.toFixed(1) : Math.round(mb)} MB`;
}

export function mib(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

export function fillTable(table, rows) {
  const body = table.querySelector('tbody');
  body.replaceChildren();
  for (const [key, label, value] of rows) {
    const tr = document.createElement('tr');
    tr.dataset.key = key;
    const th = document.createElement('th');
    th.textContent = label;
    const td = document.createElement('td');
    td.textContent = String(value);
    tr.append(th, td);
    body.append(tr);
  }
  table.hidden = false;
}

export function kib(bytes) { return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : mib(bytes); }

export function clock(ms) {
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}

export const nextFrame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
