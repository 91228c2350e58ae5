// The docs' pictures of the page's flow with the real default model, in headless Chromium
// as tests/e2e runs it: docs/page-flow-desktop.png and docs/page-flow-phone.png (the page
// as a first-time visitor finds it, the estimate for the default settings shown), and
// docs/page-flow-tuning.png (two steps into a run of the default settings, then cancelled).
// Prints the estimate, the speed of the run's steps and the page's length.
//   cd tests/e2e && npm run screenshots
// Needs www/pkg, www/pkg-threads (scripts/build-wasm.sh) and www/models/default.gguf.

import { ROOT, WWW, serve, launchBrowser, ensureWebData } from './harness.mjs';
import path from 'node:path';

const DOCS = path.join(ROOT, 'docs');
const TIMEOUT_MS = 600_000;

ensureWebData();
const { server, base } = await serve(WWW);
const browser = await launchBrowser();
try {
  for (const [width, height, name] of [[1100, 900, 'page-flow-desktop.png'], [390, 844, 'page-flow-phone.png']]) {
    const page = await browser.newPage({ viewport: { width, height } });
    page.setDefaultTimeout(TIMEOUT_MS);
    const t0 = Date.now();
    await page.goto(base);
    await page.waitForFunction(() => document.querySelector('#estimate').dataset.seconds !== undefined);
    const r = await page.evaluate(() => ({
      model: document.querySelector('#model-status').textContent,
      data: document.querySelector('#data-status').textContent,
      plan: document.querySelector('#plan-status').textContent,
      estimate: document.querySelector('#estimate').textContent,
      length: document.documentElement.scrollHeight,
    }));
    console.log(`${width} px: ready with an estimate in ${((Date.now() - t0) / 1000).toFixed(1)} s; page ${r.length} px long`);
    console.log(`  ${r.model}\n  ${r.data}\n  ${r.plan}\n  ${r.estimate}`);
    await page.screenshot({ path: path.join(DOCS, name), fullPage: true });
    if (width > 1000) {
      await page.click('#tune-start');
      await page.waitForFunction(() => window.edgeLlmTune.step >= 2, null, { polling: 1000 });
      const run = await page.evaluate(() => ({
        status: document.querySelector('#tune-status').textContent,
        speeds: window.edgeLlmTune.speeds,
      }));
      console.log(`  running: ${run.status}\n  steps: ${run.speeds.map(([s, t, ms]) =>
        `${s}: ${t.toFixed(1)} tokens/s, ${(ms / 1000).toFixed(1)} s`).join('; ')}`);
      await page.screenshot({ path: path.join(DOCS, 'page-flow-tuning.png'), fullPage: true });
      await page.click('#tune-cancel');
      await page.waitForFunction(() => document.body.dataset.tuneState === 'cancelled');
    }
    await page.close();
  }
} finally {
  await browser.close();
  server.kill();
}
