// The WebGPU section: the page's adapter, its limits and features.

import { $, showError, messageOf, mib, fillTable } from './ui.js';
import { wasm, setGpuDescription } from './state.js';

export async function showGpu() {
  const status = $('gpu-status');
  if (!('gpu' in navigator)) {
    status.textContent = 'No WebGPU.';
    showError('gpu-error',
      'This browser does not offer WebGPU (navigator.gpu is missing). Use a current Chrome or Edge ' +
      '(113 or later), Safari 26, or Firefox 141 or later on Windows. On Linux, start Chrome with ' +
      '--enable-unsafe-webgpu. WebGPU also needs a secure page: open it from http://localhost or https. ' +
      'Until then, tuning, evaluation and chat run on the CPU engine (WebAssembly) in this tab.');
    return;
  }
  try {
    const info = await wasm.gpuInfo();
    setGpuDescription(info);
    // wgpu reports only the adapter description; the browser's GPUAdapterInfo adds more.
    let vendor = '', architecture = '';
    try {
      const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
      vendor = adapter?.info?.vendor ?? '';
      architecture = adapter?.info?.architecture ?? '';
    } catch { /* informational only */ }
    const name = info.adapter || [vendor, architecture].filter(Boolean).join(' ') || '(unnamed)';
    const dev = info.device_limits, ad = info.adapter_limits;
    const both = (key, fmt = (v) => v) =>
      dev[key] === ad[key] ? fmt(dev[key]) : `${fmt(dev[key])} (adapter allows ${fmt(ad[key])})`;
    const table = $('gpu-table');
    table.dataset.backend = info.backend;
    fillTable(table, [
      ['adapter', 'Adapter', name],
      ['backend', 'Backend', info.backend],
      ['vendor', 'Vendor', vendor || '—'],
      ['architecture', 'Architecture', architecture || '—'],
      ['device_type', 'Device type', info.device_type],
      ['max_storage_buffer_binding_size', 'Max storage buffer binding', both('max_storage_buffer_binding_size', mib)],
      ['max_buffer_size', 'Max buffer size', both('max_buffer_size', mib)],
      ['max_compute_workgroups_per_dimension', 'Max workgroups per dimension', both('max_compute_workgroups_per_dimension')],
      ['max_compute_invocations_per_workgroup', 'Max invocations per workgroup', both('max_compute_invocations_per_workgroup')],
      ['max_compute_workgroup_storage_size', 'Workgroup memory', both('max_compute_workgroup_storage_size', (v) => `${v / 1024} KiB`)],
    ]);
    const offered = info.adapter_features.length ? info.adapter_features.join(', ') : 'none';
    const used = info.features.length ? info.features.join(', ') : 'none (the kernels need only core WebGPU)';
    $('gpu-features').textContent = `Adapter offers: ${offered}\nEnabled: ${used}`;
    $('gpu-features-box').hidden = false;
    status.textContent = `WebGPU adapter ready: ${name}.`;
    status.classList.add('ok');
  } catch (e) {
    status.textContent = 'No WebGPU adapter.';
    showError('gpu-error',
      `${messageOf(e)}\nThe browser has WebGPU but gave no adapter: check that hardware acceleration ` +
      'is on (chrome://settings/system) and see chrome://gpu for why WebGPU is disabled. Until then, ' +
      'tuning, evaluation and chat run on the CPU engine (WebAssembly) in this tab.');
  }
}
