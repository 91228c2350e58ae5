// The one client of worker.js, for both of the page's workers: the long-lived one that
// tunes, evaluates and chats (its own GPU device), and the one-job workers that profile and
// compress on the CPU. Requests are {id, op, args} and answered {id, ok, result | error};
// messages without an id are events, handed to `onEvent`.

/// Starts a worker.js (throws where module workers cannot start). `onError` gets the
/// worker's error events; `failPending` rejects every request still waiting.
export function workerClient({ onEvent, onError }) {
  const worker = new Worker('worker.js', { type: 'module' });
  const pending = new Map();
  let next = 1;
  const failPending = (err) => {
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  worker.onmessage = (e) => {
    const m = e.data;
    if (!m.id) { onEvent(m); return; }
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (p) { if (m.ok) p.resolve(m.result); else p.reject(new Error(m.error)); }
  };
  worker.onerror = (e) => onError(e);
  return {
    call(op, args = {}, transfer = []) {
      return new Promise((resolve, reject) => {
        const id = next++;
        pending.set(id, { resolve, reject });
        worker.postMessage({ id, op, args }, transfer);
      });
    },
    failPending,
    terminate(reason) {
      worker.terminate();
      failPending(new Error(reason || 'stopped'));
    },
  };
}
