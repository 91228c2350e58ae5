// The page end to end: serve www/ as scripts/run.sh does (scripts/serve.py on a free
// loopback port), open it in headless Chromium with WebGPU (SwiftShader), and check
// that the adapter, the default model's configuration and the tokenized prompt appear; the
// page leads with its five steps (model, data, tune, try, download) and keeps the expert
// parts collapsed, at desktop and phone widths; a bad model file (which keeps the loaded
// model) and a browser without WebGPU give plain messages with what to do; nothing
// leaves the tab (the Content-Security-Policy blocks connections to another origin from the
// page and from its workers).
// Saves tests/e2e/artifacts/page.png and no-webgpu.png. Needs www/pkg (scripts/build-wasm.sh) and
// www/models/default.gguf (scripts/run.sh or scripts/test.sh link it).

import { test, before, after } from 'node:test';
import { ready, openAll, WWW, ARTIFACTS, serve, launchBrowser } from './harness.mjs';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

// Fetching and parsing the 90 MB model on a small shared CPU takes a while.
const PAGE_TIMEOUT_MS = 180_000;

let server, browser, base;

before(async () => {
  for (const [file, fix] of [
    ['pkg/edge_llm.js', 'run scripts/build-wasm.sh'],
    ['models/default.gguf', 'run scripts/run.sh or scripts/test.sh, which link the model there'],
  ]) {
    assert.ok(fs.existsSync(path.join(WWW, file)), `www/${file} is missing: ${fix}`);
  }
  ({ server, base } = await serve(WWW));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.kill();
});

test('the server sends wasm as application/wasm', async () => {
  const r = await fetch(`${base}pkg/edge_llm_bg.wasm`, { method: 'HEAD' });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'application/wasm');
});

test('the page shows the WebGPU adapter, the model configuration and the tokenized prompt', async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const pageErrors = [];
  const consoleErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  try {
    await page.goto(base);

    // Each wait ends on success or on the page's own error message, whichever comes first.
    const outcome = (okSelector, okText, errorSelector) => page.waitForFunction(
      ([okSel, text, errSel]) => {
        const err = document.querySelector(errSel);
        if (err && !err.hidden && err.textContent) return `error: ${err.textContent}`;
        const el = document.querySelector(okSel);
        return el && (text === null || el.textContent === text) ? 'ok' : false;
      },
      [okSelector, okText, errorSelector],
      { timeout: PAGE_TIMEOUT_MS },
    ).then((h) => h.jsonValue());

    assert.equal(await outcome('#gpu-table [data-key=backend] td', 'webgpu', '#gpu-error'), 'ok');
    const adapter = await page.textContent('#gpu-table [data-key=adapter] td');
    assert.ok(adapter && adapter !== '(unnamed)', `adapter name: ${adapter}`);
    // The phone-class limit, forced: the page asks for WebGPU's default 128 MiB per storage
    // binding whatever the adapter allows (SwiftShader: 1 GiB), so every browser test runs
    // under it.
    const maxBinding = await page.textContent('#gpu-table [data-key=max_storage_buffer_binding_size] td');
    assert.match(maxBinding, /^128\.0 MiB( \(adapter allows [\d.]+ MiB\))?$/);

    assert.equal(await outcome('#config-table [data-key=n_layers] td', '30', '#model-error'), 'ok');
    assert.equal(await page.textContent('#config-table [data-key=hidden] td'), '576');

    assert.equal(await outcome('#tokens .token', null, '#tokenizer-error'), 'ok');
    const withChat = Number((await page.textContent('#token-count')).match(/^(\d+) tokens?$/)?.[1]);
    assert.ok(withChat > 0, 'a token count');
    const ids = JSON.parse(await page.textContent('#token-ids'));
    assert.equal(ids.length, withChat);
    assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 49152), `ids ${ids}`);

    // Without the ChatML wrapper the same prompt has fewer tokens (in the tokenizer viewer,
    // one of the collapsed sections).
    await openAll(page);
    await page.uncheck('#chatml');
    await page.waitForFunction((n) => {
      const m = document.querySelector('#token-count').textContent.match(/^(\d+) tokens?$/);
      return m && Number(m[1]) < n;
    }, withChat);
    await page.check('#chatml');
    await page.waitForFunction((n) => document.querySelector('#token-count').textContent === `${n} tokens`, withChat);

    await ready(page);
    for (const box of ['#gpu-error', '#model-error', '#tokenizer-error']) {
      assert.equal(await page.isHidden(box), true, `${box}: ${await page.textContent(box)}`);
    }
    assert.match(await page.textContent('#gpu-features'), /^Adapter offers: /);
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'page.png'), fullPage: true });
    if (consoleErrors.length) console.log(`browser console errors:\n${consoleErrors.join('\n')}`);
    await page.close();
  }
});

test('one obvious path: the five steps first, the expert parts collapsed below, usable at phone width', async () => {
  for (const [width, height, shot] of [[1100, 900, 'flow-desktop.png'], [390, 844, 'flow-phone.png']]) {
    const page = await browser.newPage({ viewport: { width, height } });
    page.setDefaultTimeout(PAGE_TIMEOUT_MS);
    try {
      await page.goto(`${base}?model=models/tiny.gguf`);
      await page.waitForFunction(() => document.body.dataset.ready === 'true' &&
        !document.querySelector('#tune-start').disabled);
      const r = await page.evaluate(() => {
        // Inside a closed <details> an element is laid out but not rendered.
        const shown = (sel) => document.querySelector(sel).checkVisibility();
        return {
          sections: [...document.querySelectorAll('main > section')].map((e) => e.id),
          steps: [...document.querySelectorAll('main > section h2 .step')].map((e) => e.textContent),
          shown: Object.fromEntries(['#model-status', '#data-file', '#opt-steps', '#tune-start', '#chat-send',
            '#tune-download', '#gpu-table', '#prompt', '#compress-box', '#opt-lr', '#opt-mode', '#config-table']
            .map((sel) => [sel, shown(sel)])),
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          height: document.documentElement.scrollHeight,
          startTop: document.querySelector('#tune-start').getBoundingClientRect().top,
        };
      });
      console.log(`${width} px wide: page ${r.height} px long, Start at ${Math.round(r.startTop)} px`);
      assert.deepEqual(r.sections, ['model-section', 'data-section', 'tune-section', 'eval-section', 'download-section',
        'gpu-section', 'tokenizer-section', 'compress-section']);
      assert.deepEqual(r.steps, ['1', '2', '3', '4', '5']);
      for (const sel of ['#model-status', '#data-file', '#opt-steps', '#tune-start', '#chat-send', '#tune-download']) {
        assert.equal(r.shown[sel], true, `${sel} is on the path`);
      }
      for (const sel of ['#gpu-table', '#prompt', '#compress-box', '#opt-lr', '#opt-mode', '#config-table']) {
        assert.equal(r.shown[sel], false, `${sel} is collapsed`);
      }
      assert.ok(r.overflow <= 0, `${r.overflow} px wider than the screen`);
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: path.join(ARTIFACTS, shot), fullPage: true });
    } finally {
      await page.close();
    }
  }
});

test('a file that is not GGUF gives a plain message and keeps the model; a good file picked from disk loads', async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  try {
    await page.goto(base);
    await ready(page);
    const loaded = await page.textContent('#model-status');
    // The default model, named by what it is (recognised by its file's sha256).
    assert.match(loaded, /^Loaded SmolLM2-135M-Instruct \(Q4_1, \d+ MB\)\.$/);
    assert.equal(await page.textContent('#config-table [data-key=hf_id] td'), 'HuggingFaceTB/SmolLM2-135M-Instruct');

    await page.setInputFiles('#model-file', {
      name: 'notes.gguf',
      mimeType: 'application/octet-stream',
      buffer: Buffer.from('this is not a GGUF file at all'),
    });
    await page.waitForSelector('#model-error:not([hidden])');
    const message = await page.textContent('#model-error');
    assert.match(message, /^Could not load notes\.gguf: /);
    assert.match(message, /The model loaded before, SmolLM2-135M-Instruct \(Q4_1, \d+ MB\), is still the one in use/);
    assert.doesNotMatch(message, /internal error/, 'a bad file must be an error, not a panic');
    // Nothing changed: the model, its configuration and the prompt's tokens stay.
    assert.equal(await page.textContent('#model-status'), loaded);
    assert.equal(await page.isHidden('#config-table'), false);
    assert.ok(await page.locator('#tokens .token').count() > 0);

    await page.setInputFiles('#model-file', path.join(WWW, 'models', 'default.gguf'));
    await page.waitForFunction(() => document.querySelector('#model-status').dataset.file === 'default.gguf' &&
      /^Loaded /.test(document.querySelector('#model-status').textContent));
    assert.equal(await page.isHidden('#model-error'), true);
    assert.equal(await page.textContent('#config-table [data-key=n_layers] td'), '30');
    await page.waitForSelector('#tokens .token');
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    await page.close();
  }
});

test('without WebGPU: plain messages with what to do, the model loads, tuning runs on the CPU engine', async () => {
  // A browser without WebGPU, in the page and in its workers.
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  await context.addInitScript(() => { delete Navigator.prototype.gpu; });
  await context.route('**/worker.js', async (route) => {
    const r = await route.fetch();
    await route.fulfill({ response: r, body: `delete WorkerNavigator.prototype.gpu;\n${await r.text()}` });
  });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  try {
    await page.goto(base);
    await ready(page);
    assert.equal(await page.textContent('#gpu-status'), 'No WebGPU.');
    assert.match(await page.textContent('#gpu-error'), /does not offer WebGPU .* Use a current Chrome or Edge/);
    // The model is read without a GPU (configuration and tokenizer run in wasm on the CPU).
    assert.match(await page.textContent('#model-status'), /^Loaded SmolLM2-135M-Instruct \(Q4_1, \d+ MB\)\.$/);
    assert.equal(await page.textContent('#config-table [data-key=n_layers] td'), '30');
    // The engine rule picks the CPU engine and says why, without wgpu's list of backends.
    await page.waitForFunction(() => /^Runs on the CPU engine/.test(document.querySelector('#plan-status').textContent));
    const why = await page.textContent('#plan-table [data-key=device] td');
    assert.match(why, /^the CPU engine, because there is no GPU adapter \(.*no WebGPU adapter found/);
    assert.doesNotMatch(why, /not compiled in|mesa-vulkan/);
    assert.equal(await page.isHidden('#tune-error'), true);
    assert.equal(await page.isDisabled('#tune-start'), false);
    // Asking for the GPU where there is none is refused with what to do.
    await page.selectOption('#opt-device', 'gpu');
    await page.waitForFunction(() => document.querySelector('#plan-status').textContent.startsWith('There is no GPU here'));
    assert.match(await page.textContent('#plan-error'), /choose 'auto' or 'cpu'/);
    assert.equal(await page.isDisabled('#tune-start'), true);
    assert.deepEqual(pageErrors, [], 'uncaught errors on the page');
  } finally {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'no-webgpu.png'), fullPage: true }).catch(() => {});
    await context.close();
  }
});

test('nothing leaves the tab: the page and its workers cannot connect to another origin', async () => {
  // Every file the page and its workers run is served with the policy (a worker takes the
  // policy of its own response, not the page's <meta>).
  for (const f of ['', 'worker.js', 'edge-llm.js', 'pkg/edge_llm.js', 'pkg-threads/edge_llm.js']) {
    const csp = (await fetch(base + f)).headers.get('content-security-policy') ?? '';
    assert.match(csp, /connect-src 'self'/, `${f || 'index.html'}: ${csp}`);
  }
  const other = await serve(ARTIFACTS);   // another port: another origin
  const page = await browser.newPage();
  try {
    await page.goto(base);
    const r = await page.evaluate(async (url) => {
      // A connection the policy refuses fires 'securitypolicyviolation' (only CSP does).
      const attempt = (scope) => new Promise((resolve) => {
        scope.addEventListener('securitypolicyviolation',
          (e) => resolve(`blocked by ${e.effectiveDirective}`), { once: true });
        fetch(url, { mode: 'no-cors' }).then(() => resolve('connected'), () => {});
      });
      const inPage = await attempt(document);
      const src = `onmessage = async (e) => {
        self.addEventListener('securitypolicyviolation',
          (v) => postMessage('blocked by ' + v.effectiveDirective), { once: true });
        fetch(e.data, { mode: 'no-cors' }).then(() => postMessage('connected'), () => {});
      };`;
      const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
      const inWorker = await new Promise((resolve) => { w.onmessage = (e) => resolve(e.data); w.postMessage(url); });
      w.terminate();
      const sameOrigin = (await fetch('index.html')).ok;
      return { inPage, inWorker, sameOrigin };
    }, `${other.base}x.txt`);
    assert.deepEqual(r, { inPage: 'blocked by connect-src', inWorker: 'blocked by connect-src', sameOrigin: true });
  } finally {
    await page.close();
    other.server.kill();
  }
});
