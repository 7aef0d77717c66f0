// The page: send an image to POST /segment, show the labels blended over it in the browser.
// The label map comes as a PNG (pixel = class id) inside the JSON answer; it is decoded here
// so that the slider re-blends at once and hovering names the exact class of a pixel. A model
// with a confidence output also gives its confidence map (?format=confidence, grey PNG),
// shown beside the overlay; the second slider paints the pixels below it in the unsure colour.
"use strict";

const $ = (id) => document.getElementById(id);
const GREY = [128, 128, 128];
// contract.encode.UNSURE_COLOR, the service's colour for ?min_confidence= (a test checks).
const UNSURE = [224, 224, 192];
let model = null; // GET /v1/model
let result = null; // {width, height, ids, base: ImageData, classes, confidence: Uint16Array | null}
let current = 0; // the latest upload; answers to older ones are dropped

class ServiceError extends Error {}

// The service's error body is {"error": {"code", "message"}}; say what it says.
async function check(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error && body.error.message) message = `${response.status}: ${body.error.message}`;
  } catch (_) { /* not JSON: keep the status line */ }
  throw new ServiceError(message);
}

function showError(error) {
  $("error").textContent = error instanceof ServiceError ? error.message : `Error: ${error.message}`;
  $("error").hidden = false;
  $("status").textContent = "";
}

async function loadModel() {
  const info = await (await check(await fetch("/v1/model"))).json();
  $("model-name").textContent = `${info.name} (${info.version})`;
  $("model-arch").textContent = `${info.arch}, ${info.precision}`;
  $("model-provider").textContent = `${info.runtime.provider}, ${info.runtime.precision}`;
  $("model-classes").textContent = `${info.classes.length}: ${info.classes.join(", ")}`;
  // The exporter's caveat (fcn.note), e.g. what the model was never trained to see.
  if (info.note) {
    $("model-note").textContent = `Note: ${info.note}`;
    $("model-note").hidden = false;
  }
  return info;
}

function colour(id) {
  return model.palette[id] || GREY;
}

// --- the label PNG: 8-bit (or fewer bits) palette, or 16-bit grey above 255 classes ---------

function paeth(a, b, c) {
  const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

async function decodeLabels(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks = [];
  let width = 0, height = 0, depth = 0, type = 0, interlace = 0;
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const kind = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (kind === "IHDR") {
      [width, height] = [view.getUint32(at + 8), view.getUint32(at + 12)];
      [depth, type, interlace] = [bytes[at + 16], bytes[at + 17], bytes[at + 20]];
    } else if (kind === "IDAT") {
      chunks.push(bytes.subarray(at + 8, at + 8 + length));
    } else if (kind === "IEND") break;
    at += 12 + length;
  }
  // Palette labels (8 bits or fewer), 16-bit grey labels, or the 8-bit grey confidence map.
  if (interlace || !((type === 3 && depth <= 8) || (type === 0 && (depth === 16 || depth === 8)))) {
    throw new Error(`unexpected label PNG (colour type ${type}, ${depth} bits)`);
  }
  const stream = new Blob(chunks).stream().pipeThrough(new DecompressionStream("deflate"));
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const step = Math.max(1, depth / 8); // bytes per pixel, for the filters
  const stride = Math.ceil((width * depth) / 8);
  const rows = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)], from = y * (stride + 1) + 1, row = y * stride;
    for (let i = 0; i < stride; i++) {
      const a = i >= step ? rows[row + i - step] : 0;
      const b = y ? rows[row - stride + i] : 0;
      const c = y && i >= step ? rows[row - stride + i - step] : 0;
      const predicted = [0, a, b, (a + b) >> 1, paeth(a, b, c)][filter];
      rows[row + i] = (raw[from + i] + predicted) & 255;
    }
  }
  const ids = new Uint16Array(width * height);
  for (let y = 0, k = 0; y < height; y++) {
    for (let x = 0; x < width; x++, k++) {
      if (depth === 16) ids[k] = (rows[y * stride + 2 * x] << 8) | rows[y * stride + 2 * x + 1];
      else {
        const bit = x * depth, byte = rows[y * stride + (bit >> 3)];
        ids[k] = (byte >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
      }
    }
  }
  return { width, height, ids };
}

// --- the image's pixels at the labels' size ------------------------------------------------

async function pixels(source, width, height) {
  const bitmap = await createImageBitmap(source);
  if (bitmap.width !== width || bitmap.height !== height) return null;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff"; // transparent pixels over white, as the service composites them
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, width, height);
}

function post(file, query) {
  const form = new FormData();
  form.append("image", file);
  return fetch(`/segment?${query}`, { method: "POST", body: form }).then(check);
}

// The browser's own decoding when it agrees with the service's size (EXIF applied, as the
// service does); otherwise (TIFF, say) the image as the service decoded it: overlay at alpha 0.
async function original(file, width, height) {
  try {
    const own = await pixels(file, width, height);
    if (own) return { base: own, url: URL.createObjectURL(file) };
  } catch (_) { /* a format this browser cannot decode */ }
  const blob = await (await post(file, "format=overlay&alpha=0&image_format=png")).blob();
  return { base: await pixels(blob, width, height), url: URL.createObjectURL(blob) };
}

function base64Bytes(text) {
  return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
}

// --- showing it ----------------------------------------------------------------------------

// The smallest confidence value (0-255) at or above a probability: contract.encode's rule.
function limit(probability) {
  return Math.ceil(Math.round(probability * 255 * 1e6) / 1e6);
}

// Whether pixel k is below the unsure slider (never, without a confidence map).
function unsureAt(k, below) {
  return result.confidence !== null && result.confidence[k] < below;
}

function blend() {
  if (!result) return;
  const alpha = Number($("alpha").value);
  $("alpha-value").textContent = alpha.toFixed(2);
  const threshold = Number($("min-confidence").value);
  $("min-confidence-value").textContent = threshold.toFixed(2);
  const below = limit(threshold);
  const { width, height, ids, base } = result;
  const out = new ImageData(width, height);
  for (let k = 0, p = 0; k < ids.length; k++, p += 4) {
    const rgb = unsureAt(k, below) ? UNSURE : colour(ids[k]);
    for (let ch = 0; ch < 3; ch++) {
      out.data[p + ch] = Math.round(base.data[p + ch] * (1 - alpha) + rgb[ch] * alpha);
    }
    out.data[p + 3] = 255;
  }
  const canvas = $("overlay");
  [canvas.width, canvas.height] = [width, height];
  canvas.getContext("2d").putImageData(out, 0, 0);
  legend(shares(below));
}

// The confidence map as grey pixels: 255 (white) sure, 0 unsure.
function showConfidence() {
  const figure = $("confidence-figure");
  figure.hidden = result.confidence === null;
  if (figure.hidden) return;
  const { width, height, confidence } = result;
  const out = new ImageData(width, height);
  for (let k = 0, p = 0; k < confidence.length; k++, p += 4) {
    out.data[p] = out.data[p + 1] = out.data[p + 2] = confidence[k];
    out.data[p + 3] = 255;
  }
  const canvas = $("confidence");
  [canvas.width, canvas.height] = [width, height];
  canvas.getContext("2d").putImageData(out, 0, 0);
}

// The legend's entries: the service's classes, or, with pixels below the unsure slider, the
// classes of the other pixels and the unsure share (as the service's overlay legend counts).
function shares(below) {
  if (result.confidence === null || below === 0) return result.classes;
  const counts = new Map();
  let unsure = 0;
  for (let k = 0; k < result.ids.length; k++) {
    if (unsureAt(k, below)) unsure++;
    else counts.set(result.ids[k], (counts.get(result.ids[k]) || 0) + 1);
  }
  const total = result.ids.length;
  const entries = [...counts].map(([id, n]) => ({ id, name: model.classes[id] ?? String(id), fraction: n / total }));
  entries.sort((a, b) => b.fraction - a.fraction || a.id - b.id);
  if (unsure) entries.push({ id: null, name: "unsure", fraction: unsure / total });
  return entries;
}

function percent(fraction) {
  return fraction < 0.001 ? "<0.1%" : `${(fraction * 100).toFixed(1)}%`;
}

function legend(classes) {
  const items = classes.map((entry) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${(entry.id === null ? UNSURE : colour(entry.id)).join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.name;
    item.append(swatch, name, ` ${percent(entry.fraction)}`);
    if (entry.id !== null) item.dataset.id = entry.id;
    return item;
  });
  $("legend").replaceChildren(...items);
}

function hover(event) {
  if (!result) return;
  const box = event.currentTarget.getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) * result.width) / box.width);
  const y = Math.floor(((event.clientY - box.top) * result.height) / box.height);
  if (x < 0 || y < 0 || x >= result.width || y >= result.height) return;
  const id = result.ids[y * result.width + x];
  const name = model.classes[id] ?? String(id);
  const sure = result.confidence === null ? "" : `, ${Math.round((result.confidence[y * result.width + x] / 255) * 100)}% sure`;
  $("hover").textContent = `x ${x}, y ${y}: ${name}${sure}`;
  $("hover").dataset.id = id;
}

async function segment(file) {
  const upload = ++current;
  $("error").hidden = true;
  $("status").textContent = `Segmenting ${file.name}\u2026`;
  try {
    const started = performance.now();
    model = model || (await loadModel());
    const response = await post(file, "format=json&label_encoding=png");
    const answer = await response.json();
    const png = base64Bytes(answer.label_map);
    const labels = await decodeLabels(png);
    // A second pass for the confidence map, when the model has one.
    let confidence = null;
    if ((model.outputs || []).includes("confidence")) {
      const grey = await (await post(file, "format=confidence")).arrayBuffer();
      confidence = (await decodeLabels(new Uint8Array(grey))).ids;
    }
    const seen = await original(file, answer.width, answer.height);
    if (upload !== current) return URL.revokeObjectURL(seen.url);
    result = { ...labels, base: seen.base, classes: answer.classes, confidence };
    URL.revokeObjectURL($("original").src);
    $("original").src = seen.url;
    $("unsure-controls").hidden = confidence === null;
    blend();
    showConfidence();
    const link = $("download");
    URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([png], { type: "image/png" }));
    link.download = `${file.name.replace(/\.[^.]*$/, "")}-labels.png`;
    const inference = response.headers.get("x-inference-time-ms");
    $("timing").textContent =
      `${answer.width} \u00d7 ${answer.height} pixels, answered in ` +
      `${Math.round(performance.now() - started)} ms` +
      (inference ? ` (inference ${inference} ms).` : ".");
    $("result").hidden = false;
    $("status").textContent = `Segmented ${file.name}.`;
  } catch (error) {
    if (upload !== current) return;
    result = null; // an answer about another image would mislead
    $("result").hidden = true;
    showError(error);
  }
}

function start() {
  const drop = $("drop");
  $("file").addEventListener("change", () => $("file").files[0] && segment($("file").files[0]));
  drop.addEventListener("submit", (event) => event.preventDefault());
  // Anywhere on the page: a file dropped elsewhere would make the browser open it instead.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) segment(file);
  });
  $("alpha").addEventListener("input", blend);
  $("min-confidence").addEventListener("input", blend);
  for (const picture of [$("original"), $("overlay"), $("confidence")]) {
    picture.addEventListener("mousemove", hover);
  }
  loadModel().then((info) => { model = model || info; }, showError);
}

start();
