// The page: send an image to POST /segment, show the labels blended over it in the browser.
// The label map comes as a PNG (pixel = class id) inside the JSON answer; it is decoded here
// so that the slider re-blends at once and hovering names the exact class of a pixel.
"use strict";

const $ = (id) => document.getElementById(id);
const GREY = [128, 128, 128];
let model = null; // GET /v1/model
let result = null; // {width, height, ids, base: ImageData, classes}
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
  if (interlace || !((type === 3 && depth <= 8) || (type === 0 && depth === 16))) {
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

function blend() {
  if (!result) return;
  const alpha = Number($("alpha").value);
  $("alpha-value").textContent = alpha.toFixed(2);
  const { width, height, ids, base } = result;
  const out = new ImageData(width, height);
  for (let k = 0, p = 0; k < ids.length; k++, p += 4) {
    const rgb = colour(ids[k]);
    for (let ch = 0; ch < 3; ch++) {
      out.data[p + ch] = Math.round(base.data[p + ch] * (1 - alpha) + rgb[ch] * alpha);
    }
    out.data[p + 3] = 255;
  }
  const canvas = $("overlay");
  [canvas.width, canvas.height] = [width, height];
  canvas.getContext("2d").putImageData(out, 0, 0);
}

function percent(fraction) {
  return fraction < 0.001 ? "<0.1%" : `${(fraction * 100).toFixed(1)}%`;
}

function legend(classes) {
  const items = classes.map((entry) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colour(entry.id).join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.name;
    item.append(swatch, name, ` ${percent(entry.fraction)}`);
    item.dataset.id = entry.id;
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
  $("hover").textContent = `x ${x}, y ${y}: ${name}`;
  $("hover").dataset.id = id;
}

async function segment(file) {
  const upload = ++current;
  $("error").hidden = true;
  $("status").textContent = `Segmenting ${file.name}\u2026`;
  try {
    const started = performance.now();
    const response = await post(file, "format=json&label_encoding=png");
    const answer = await response.json();
    const png = base64Bytes(answer.label_map);
    const labels = await decodeLabels(png);
    const seen = await original(file, answer.width, answer.height);
    if (upload !== current) return URL.revokeObjectURL(seen.url);
    model = model || (await loadModel());
    if (upload !== current) return URL.revokeObjectURL(seen.url);
    result = { ...labels, base: seen.base, classes: answer.classes };
    URL.revokeObjectURL($("original").src);
    $("original").src = seen.url;
    blend();
    legend(answer.classes);
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
  for (const picture of [$("original"), $("overlay")]) picture.addEventListener("mousemove", hover);
  loadModel().then((info) => { model = model || info; }, showError);
}

start();
