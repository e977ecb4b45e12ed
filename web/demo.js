// Browser demo: runs the models listed in models.json side by side with onnxruntime-web.
// onnxruntime-web is vendored next to this file (web/build.sh, pinned in package-lock.json): no CDN, works offline.
//
// Preprocessing PREPROCESSING_ID, the arithmetic of pipelines/modelcard.py `to_model_input` (each model's
// card names it, copied into models.json): EXIF orientation, transparency over black, centre crop to the
// model's aspect ratio, exact area-average (box filter) from full resolution down to H x W, grayscale
// (0.299 R + 0.587 G + 0.114 B) when C = 1, round to integers 0..255; then the page's optional inversion.
// The model gets float32 NHWC [1, H, W, C] in 0..255.
// window.__demo exposes the exact inputs and outputs of the last update (read by tests/test_web_demo.py).
import * as ort from './vendor/ort.wasm.min.mjs';

ort.env.wasm.numThreads = 1; // no SharedArrayBuffer: a plain http.server sends no COOP/COEP headers
ort.env.wasm.wasmPaths = new URL('./vendor/', import.meta.url).href;

const PREPROCESSING_ID = 'center-crop-box-v1'; // the only preprocessing this page implements

const $ = (id) => document.getElementById(id);
const state = {
  models: [], // models.json entries + {session, H, W, C}
  averages: new Map(), // "HxW" -> box-filtered RGB (Float64Array [H, W, 3], unrounded) of the current image
  base: new Map(), // "HxWxC" -> unshifted model input (Float32Array)
  dx: 0,
  dy: 0,
  maxShift: 16,
  selected: new Set(), // class ids to show
  results: null,
  dirty: false,
  running: false,
};
const demo = {
  ready: false,
  error: null,
  seq: 0, // updates requested
  done: 0, // updates finished: results below belong to update `done`
  dx: 0,
  dy: 0,
  ortVersion: ort.env.versions?.web ?? null,
  meta: null,
  image: null, // {name, width, height, crop: [x0, y0, w, h], preprocessing}
  results: {}, // key -> {input, logits, probs, shown: [{id, name, prob}], dx, dy}
  api: null,
};
window.__demo = demo;

const shapeKey = (m) => `${m.H}x${m.W}x${m.C}`;
// "name v3" for a registered model, the file's path for a local .onnx file
const source = (m) => (m.registered_model ? `${m.registered_model} v${m.version}` : m.model_uri);

function fail(err) {
  console.error(err);
  demo.error = String(err && err.message ? err.message : err);
  $('status').textContent = `Error: ${demo.error}`;
  $('status').classList.add('error');
}

// ---------- preprocessing ----------

function cropRect(w, h, W, H) {
  // Largest centred rectangle with the model's aspect ratio W:H.
  let cw = w;
  let ch = h;
  if (w * H > h * W) cw = Math.max(1, Math.round((h * W) / H));
  else ch = Math.max(1, Math.round((w * H) / W));
  return [Math.floor((w - cw) / 2), Math.floor((h - ch) / 2), cw, ch];
}

function readPixels(bitmap, W, H) {
  // RGBA of the centre crop at full resolution (copied 1:1, never scaled by the browser: the box filter
  // below sees every pixel, as in Python), composited over black (transparent = zero, like a shift's fill).
  const [x0, y0, w, h] = cropRect(bitmap.width, bitmap.height, W, H);
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(bitmap, x0, y0, w, h, 0, 0, w, h);
  return { data: ctx.getImageData(0, 0, w, h).data, w, h, crop: [x0, y0, w, h] };
}

function boxTaps(n, m) {
  // Output i of m averages source interval [i*s, (i+1)*s), s = n/m, weighting pixels by overlap.
  const s = n / m;
  const taps = [];
  for (let i = 0; i < m; i++) {
    const a = i * s;
    const b = (i + 1) * s;
    const t = [];
    for (let j = Math.floor(a); j < Math.min(n, Math.ceil(b)); j++) {
      const wgt = Math.min(b, j + 1) - Math.max(a, j);
      if (wgt > 0) t.push([j, wgt]);
    }
    taps.push(t);
  }
  return { taps, s };
}

function boxRGB(rgba, w, h, H, W) {
  // RGBA w x h -> Float64Array [H, W, 3]: exact area averages (separable box filter), not rounded.
  const bx = boxTaps(w, W);
  const by = boxTaps(h, H);
  const tmp = new Float64Array(h * W * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < W; x++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (const [j, wgt] of bx.taps[x]) {
        const k = (y * w + j) * 4;
        r += rgba[k] * wgt;
        g += rgba[k + 1] * wgt;
        b += rgba[k + 2] * wgt;
      }
      const o = (y * W + x) * 3;
      tmp[o] = r / bx.s;
      tmp[o + 1] = g / bx.s;
      tmp[o + 2] = b / bx.s;
    }
  }
  const avg = new Float64Array(H * W * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const o = (y * W + x) * 3;
      for (const [j, wgt] of by.taps[y]) {
        const k = (j * W + x) * 3;
        avg[o] += tmp[k] * wgt;
        avg[o + 1] += tmp[k + 1] * wgt;
        avg[o + 2] += tmp[k + 2] * wgt;
      }
      for (let c = 0; c < 3; c++) avg[o + c] /= by.s;
    }
  }
  return avg;
}

function finish(avg, H, W, C, invert) {
  // Float64Array [H, W, 3] of averages -> Float32Array [H, W, C] of integers 0..255 (gray when C = 1).
  const out = new Float32Array(H * W * C);
  for (let p = 0; p < H * W; p++) {
    const [r, g, b] = [avg[p * 3], avg[p * 3 + 1], avg[p * 3 + 2]];
    const chans = C === 1 ? [0.299 * r + 0.587 * g + 0.114 * b] : [r, g, b].slice(0, C);
    for (let c = 0; c < C; c++) {
      let v = Math.min(255, Math.max(0, Math.round(chans[c])));
      if (invert) v = 255 - v;
      out[p * C + c] = v;
    }
  }
  return out;
}

function toInput(rgba, w, h, H, W, C, invert) {
  // RGBA w x h -> Float32Array [H, W, C] of integers 0..255: the whole preprocessing after the crop.
  return finish(boxRGB(rgba, w, h, H, W), H, W, C, invert);
}

function shift(x, H, W, C, dx, dy) {
  // Move the image dx pixels right and dy down; uncovered pixels are 0.
  const y = new Float32Array(x.length);
  for (let r = 0; r < H; r++) {
    const sr = r - dy;
    if (sr < 0 || sr >= H) continue;
    for (let c = 0; c < W; c++) {
      const sc = c - dx;
      if (sc < 0 || sc >= W) continue;
      for (let k = 0; k < C; k++) y[(r * W + c) * C + k] = x[(sr * W + sc) * C + k];
    }
  }
  return y;
}

function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

demo.api = {
  toInput: (rgba, w, h, H, W, C, invert) => Array.from(toInput(rgba, w, h, H, W, C, invert)),
  cropRect,
  shift,
  softmax,
};

// ---------- models ----------

async function fetchOk(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} (start the page with: python -m pipelines demo)`);
  return r;
}

async function loadModels() {
  const meta = await (await fetchOk('models.json')).json();
  demo.meta = meta;
  for (const m of meta.models) {
    if (m.input_layout !== 'NHWC') throw new Error(`${m.file}: input layout ${m.input_layout}, expected NHWC`);
    if (m.preprocessing_id !== PREPROCESSING_ID) {
      throw new Error(`${m.file}: the model wants preprocessing ${m.preprocessing_id}; this page implements ${PREPROCESSING_ID}`);
    }
    const bytes = await (await fetchOk(m.file)).arrayBuffer();
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
    const [H, W, C] = m.input_shape;
    state.models.push({ ...m, session, H, W, C });
  }
  state.maxShift = Math.max(...state.models.map((m) => Math.floor(Math.max(m.H, m.W) / 2)));
  for (const id of ['dx', 'dy']) {
    $(id).min = -state.maxShift;
    $(id).max = state.maxShift;
  }
  $('topk').max = state.models[0].class_ids.length;
  $('topk').value = Math.min(5, state.models[0].class_ids.length);
}

async function runModel(m, x) {
  const out = await m.session.run({ [m.input_name]: new ort.Tensor('float32', x, [1, m.H, m.W, m.C]) });
  const logits = Array.from(out[m.output_name].data);
  return { input: Array.from(x), logits, probs: softmax(logits) };
}

// ---------- update loop: coalesces rapid changes (slider drags) into one run of both models ----------

function schedule() {
  if (!state.base.size) return;
  demo.seq += 1;
  state.dirty = true;
  if (!state.running) loop();
}

async function loop() {
  state.running = true;
  try {
    while (state.dirty) {
      state.dirty = false;
      const seq = demo.seq;
      const { dx, dy } = state;
      const results = {};
      for (const m of state.models) {
        const x = shift(state.base.get(shapeKey(m)), m.H, m.W, m.C, dx, dy);
        results[m.key] = { ...(await runModel(m, x)), dx, dy };
      }
      state.results = results;
      render();
      Object.assign(demo, { dx, dy, done: seq });
    }
  } catch (err) {
    fail(err);
  } finally {
    state.running = false;
  }
}

function preprocess() {
  state.base.clear();
  const invert = $('invert').checked;
  for (const m of state.models) {
    const key = shapeKey(m);
    const avg = state.averages.get(`${m.H}x${m.W}`);
    if (avg && !state.base.has(key)) state.base.set(key, finish(avg, m.H, m.W, m.C, invert));
  }
}

async function openFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {
      imageOrientation: 'from-image', // EXIF orientation, as Pillow's ImageOps.exif_transpose
      colorSpaceConversion: 'none', // pixel values as stored (Pillow ignores colour profiles too)
      premultiplyAlpha: 'none',
    });
  } catch (err) {
    fail(new Error(`${file.name}: not an image this browser can decode`));
    return;
  }
  state.averages.clear();
  const crops = new Map(); // "WxH" aspect -> full-resolution crop, read once per image
  let crop = null;
  for (const m of state.models) {
    const k = `${m.H}x${m.W}`;
    if (state.averages.has(k)) continue;
    const aspect = `${m.W}x${m.H}`;
    if (!crops.has(aspect)) crops.set(aspect, readPixels(bitmap, m.W, m.H));
    const px = crops.get(aspect);
    state.averages.set(k, boxRGB(px.data, px.w, px.h, m.H, m.W));
    crop = crop || px.crop;
  }
  crops.clear(); // the full-resolution pixels are not kept: the averages are all an update needs
  demo.image = { name: file.name, width: bitmap.width, height: bitmap.height, crop, preprocessing: PREPROCESSING_ID };
  const m0 = state.models[0];
  $('file-name').textContent =
    `${file.name}: ${bitmap.width}×${bitmap.height}, centre crop ${crop[2]}×${crop[3]} → ${m0.W}×${m0.H}` +
    (m0.C === 1 ? ' grayscale' : '') +
    ` (preprocessing ${PREPROCESSING_ID})`;
  bitmap.close();
  $('status').classList.remove('error');
  demo.error = null;
  preprocess();
  schedule();
}

// ---------- rendering ----------

function drawPreviews() {
  const box = $('previews');
  const seen = new Set();
  for (const m of state.models) {
    const key = shapeKey(m);
    if (seen.has(key)) continue;
    seen.add(key);
    let fig = box.querySelector(`figure[data-shape="${key}"]`);
    if (!fig) {
      fig = document.createElement('figure');
      fig.dataset.shape = key;
      fig.innerHTML = `<canvas width="${m.W}" height="${m.H}"></canvas><figcaption></figcaption>`;
      box.appendChild(fig);
    }
    const x = state.results[m.key].input;
    const img = new ImageData(m.W, m.H);
    for (let p = 0; p < m.W * m.H; p++) {
      for (let c = 0; c < 3; c++) img.data[p * 4 + c] = x[p * m.C + (m.C === 1 ? 0 : c)];
      img.data[p * 4 + 3] = 255;
    }
    fig.querySelector('canvas').getContext('2d').putImageData(img, 0, 0);
    fig.querySelector('figcaption').textContent =
      `model input ${m.H}×${m.W}×${m.C}, shifted x ${state.dx}, y ${state.dy}`;
  }
}

function modelColumns() {
  const box = $('results');
  box.innerHTML = '';
  for (const m of state.models) {
    const col = document.createElement('div');
    col.className = 'model';
    col.dataset.key = m.key;
    const acc = m.test_accuracy == null ? 'n/a' : `${(100 * m.test_accuracy).toFixed(1)}\u00a0%`;
    col.innerHTML = `<h2></h2><div class="meta"></div><ol></ol>`;
    col.querySelector('h2').textContent = m.title;
    col.querySelector('.meta').textContent =
      `${source(m)} · ${m.dataset} · test accuracy ${acc} · run ${(m.train_run_id || m.run_id || '').slice(0, 8)}`;
    col.querySelector('ol').innerHTML = '<li class="muted">open an image</li>';
    box.appendChild(col);
  }
}

function render() {
  if (!state.results) return;
  drawPreviews();
  const k = Math.max(1, parseInt($('topk').value, 10) || 1);
  const renorm = $('renorm').checked;
  for (const m of state.models) {
    const res = state.results[m.key];
    let rows = m.class_ids.map((id, i) => ({ id, name: m.class_names[i], prob: res.probs[i] }));
    rows = rows.filter((r) => state.selected.has(r.id));
    if (renorm) {
      const s = rows.reduce((a, r) => a + r.prob, 0);
      rows = rows.map((r) => ({ ...r, prob: s > 0 ? r.prob / s : 0 }));
    }
    rows.sort((a, b) => b.prob - a.prob);
    rows = rows.slice(0, k);
    res.shown = rows;
    const ol = document.querySelector(`.model[data-key="${m.key}"] ol`);
    ol.innerHTML = '';
    if (!rows.length) ol.innerHTML = '<li class="muted">no class ticked</li>';
    for (const r of rows) {
      const li = document.createElement('li');
      li.dataset.classId = r.id;
      li.dataset.prob = String(r.prob);
      li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="prob"></span>';
      li.querySelector('.name').textContent = `${r.name}`;
      li.querySelector('.name').title = `class ${r.id} ${r.name}`;
      li.querySelector('.fill').style.width = `${(100 * r.prob).toFixed(2)}%`;
      li.querySelector('.prob').textContent = `${(100 * r.prob).toFixed(1)}\u00a0%`;
      ol.appendChild(li);
    }
  }
  demo.results = state.results;
}

function classList() {
  const m0 = state.models[0];
  const box = $('classes');
  box.innerHTML = '';
  m0.class_ids.forEach((id, i) => {
    const label = document.createElement('label');
    label.innerHTML = '<input type="checkbox" checked> <span></span>';
    label.querySelector('input').dataset.classId = id;
    label.querySelector('span').textContent = `${id} ${m0.class_names[i]}`;
    box.appendChild(label);
    state.selected.add(id);
  });
  box.addEventListener('change', (ev) => {
    const id = Number(ev.target.dataset.classId);
    if (ev.target.checked) state.selected.add(id);
    else state.selected.delete(id);
    render();
  });
  const setAll = (on) => {
    for (const cb of box.querySelectorAll('input')) {
      if (cb.closest('label').hidden) continue;
      cb.checked = on;
      const id = Number(cb.dataset.classId);
      if (on) state.selected.add(id);
      else state.selected.delete(id);
    }
    render();
  };
  $('all').addEventListener('click', () => setAll(true));
  $('none').addEventListener('click', () => setAll(false));
  $('filter').addEventListener('input', () => {
    const q = $('filter').value.trim().toLowerCase();
    for (const label of box.querySelectorAll('label')) label.hidden = q !== '' && !label.textContent.toLowerCase().includes(q);
  });
}

// ---------- controls ----------

function setShift(dx, dy) {
  const clamp = (v) => Math.max(-state.maxShift, Math.min(state.maxShift, v));
  state.dx = clamp(dx);
  state.dy = clamp(dy);
  $('dx').value = state.dx;
  $('dy').value = state.dy;
  $('dx-value').textContent = state.dx;
  $('dy-value').textContent = state.dy;
  schedule();
}

function controls() {
  $('file').addEventListener('change', () => {
    const f = $('file').files[0];
    if (f) openFile(f);
  });
  $('left').addEventListener('click', () => setShift(state.dx - 1, state.dy));
  $('right').addEventListener('click', () => setShift(state.dx + 1, state.dy));
  $('up').addEventListener('click', () => setShift(state.dx, state.dy - 1));
  $('down').addEventListener('click', () => setShift(state.dx, state.dy + 1));
  $('reset').addEventListener('click', () => setShift(0, 0));
  $('dx').addEventListener('input', () => setShift(Number($('dx').value), state.dy));
  $('dy').addEventListener('input', () => setShift(state.dx, Number($('dy').value)));
  $('topk').addEventListener('input', render);
  $('renorm').addEventListener('change', render);
  $('invert').addEventListener('change', () => {
    preprocess();
    schedule();
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.target.closest && ev.target.closest('input, textarea, select')) return;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (ev.key in moves) {
      ev.preventDefault();
      setShift(state.dx + moves[ev.key][0], state.dy + moves[ev.key][1]);
    } else if (ev.key === '0') setShift(0, 0);
  });
}

async function main() {
  controls();
  try {
    await loadModels();
  } catch (err) {
    fail(err);
    return;
  }
  modelColumns();
  classList();
  const names = state.models.map((m) => `${m.title} (${source(m)})`).join(' and ');
  $('status').textContent = `Ready: ${names}. Open an image, then shift it with the arrows (or arrow keys).`;
  $('about').textContent =
    `onnxruntime-web ${demo.ortVersion ?? '?'} (WebAssembly, vendored: works offline) · models from ${state.models
      .map((m) => m.model_uri)
      .join(', ')} · input NHWC float32 0..255 · preprocessing ${PREPROCESSING_ID}`;
  demo.ready = true;
}

main();
