// The eac web page: upload an image, show the overlay, the ranked values with 95 % intervals, the run's facts.
// Plain browser JavaScript, no build step, nothing from other origins. Talks only to this service's API.
"use strict";

const Z95 = 1.959964;             // 95 % interval: value ± Z95 · standard error
const HIGHLIGHT = [255, 214, 0];  // RGB of the hovered concept on the crop
const HIGHLIGHT_ALPHA = 0.6;      // how strongly it is painted
const DIM = 0.45;                 // brightness of the pixels outside it
const CROP_DISPLAY = 320;         // CSS pixels of the crop canvas' width

const $ = (id) => document.getElementById(id);
const state = { file: null, result: null, crop: null, masks: [], urls: [] };

function headers() {
  const key = $("apikey").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  $("chosen").textContent = `${file.name} (${Math.round(file.size / 1024)} kB)`;
}

// ------------------------------------------------------------------ COCO RLE (column-major) → mask
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function decodeMask(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);           // row-major
  let pos = 0, on = false;
  for (const run of rleCounts(rle.counts)) {
    if (on) {
      for (let i = pos; i < pos + run; i++) mask[(i % h) * w + Math.floor(i / h)] = 1;
    }
    pos += run; on = !on;
  }
  return { h, w, mask };
}

// ------------------------------------------------------------------ drawing
function drawCrop(concept) {
  const canvas = $("crop");
  if (!state.crop) return;
  const { width: w, height: h } = state.crop;
  canvas.width = w; canvas.height = h;
  canvas.style.width = `${CROP_DISPLAY}px`;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(state.crop, 0, 0);
  canvas.dataset.highlight = concept === null ? "" : String(concept);
  if (concept === null || !state.masks[concept]) return;
  const { mask } = state.masks[concept];
  const image = ctx.getImageData(0, 0, w, h);
  const px = image.data;
  for (let i = 0; i < w * h; i++) {
    for (let c = 0; c < 3; c++) {
      const v = px[4 * i + c];
      px[4 * i + c] = mask[i] ? v * (1 - HIGHLIGHT_ALPHA) + HIGHLIGHT[c] * HIGHLIGHT_ALPHA : v * DIM;
    }
  }
  ctx.putImageData(image, 0, 0);
}

function tieLetters(ties) {
  const letters = {};
  (ties || []).forEach((group, g) => group.forEach((i) => { letters[i] = String.fromCharCode(65 + (g % 26)); }));
  return letters;
}

function fmt(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(1);
}

function drawBars(result) {
  const first = (a) => (a && Array.isArray(a[0]) ? a[0] : a);
  const values = first(result.values);
  const stderr = result.stderr ? first(result.stderr) : null;
  const ranking = first(result.ranking);
  const letters = tieLetters(result.ties);
  const lows = values.map((v, i) => (stderr && Number.isFinite(stderr[i]) ? v - Z95 * stderr[i] : v));
  const highs = values.map((v, i) => (stderr && Number.isFinite(stderr[i]) ? v + Z95 * stderr[i] : v));
  const lo = Math.min(0, ...lows.filter(Number.isFinite));
  const hi = Math.max(0, ...highs.filter(Number.isFinite));
  const span = hi - lo || 1;
  const at = (v) => `${(100 * (v - lo)) / span}%`;
  const bars = $("bars");
  bars.replaceChildren();
  ranking.forEach((concept, rank) => {
    const v = values[concept];
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.concept = String(concept);
    row.dataset.rank = String(rank + 1);
    const tie = letters[concept] ? ` <span class="tie" title="tied">=${letters[concept]}</span>` : "";
    row.innerHTML = `<span>#${rank + 1}</span><span>concept ${concept}${tie}</span>` +
      `<span class="track"><span class="zero"></span><span class="bar"></span><span class="ci"></span></span>` +
      `<span class="value"></span>`;
    row.querySelector(".zero").style.left = at(0);
    const bar = row.querySelector(".bar");
    bar.classList.add(v >= 0 ? "pos" : "neg");
    bar.style.left = at(Math.min(0, v));
    bar.style.width = `${(100 * Math.abs(v)) / span}%`;
    const ci = row.querySelector(".ci");
    if (stderr && Number.isFinite(stderr[concept])) {
      ci.style.left = at(lows[concept]);
      ci.style.width = `${(100 * (highs[concept] - lows[concept])) / span}%`;
      row.title = `value ${fmt(v)}, 95 % interval [${fmt(lows[concept])}, ${fmt(highs[concept])}]`;
    } else {
      ci.remove();
      row.title = `value ${fmt(v)}`;
    }
    row.querySelector(".value").textContent = stderr ? `${fmt(v)} ± ${fmt(Z95 * stderr[concept])}` : fmt(v);
    row.addEventListener("mouseenter", () => { row.classList.add("active"); drawCrop(concept); });
    row.addEventListener("mouseleave", () => { row.classList.remove("active"); drawCrop(null); });
    bars.appendChild(row);
  });
  const label = result.labels ? result.labels[0] : `class ${result.targets[0]}`;
  $("bars-title").textContent = `Values for "${label}" (p = ${result.probabilities[0].toFixed(3)}), ` +
    `${result.value_type} values, best first`;
}

function drawFacts(result, seconds) {
  const t = result.timings || {};
  const rows = [
    ["method", `${result.method} (${result.value_type} values)`],
    ["concepts", String(result.num_concepts)],
    ["classifier evaluations", String(result.num_evaluations)],
    ["stopped", (result.info && result.info.stop_reason) || "–"],
    ...["concepts", "evaluations", "fit", "values"].map((s) => [`time: ${s}`, `${(t[s] || 0).toFixed(3)} s`]),
    ["round trip", `${seconds.toFixed(2)} s`],
    ["provider", result.provider || "–"],
    ["result id", result.id],
  ];
  const table = $("facts");
  table.replaceChildren();
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
}

async function fetchBlob(url) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) throw new Error(await errorText(response));
  return response.blob();
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error}`;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

// ------------------------------------------------------------------ the request
async function explain(event) {
  event.preventDefault();
  if (!state.file) { setStatus("Choose or drop an image first.", true); return; }
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  for (const name of ["method", "evaluations", "seed", "top_k", "target"]) {
    const value = $(name).value.trim();
    if (value) form.append(name, value);
  }
  $("go").disabled = true;
  const start = performance.now();
  setStatus("Explaining…");
  try {
    const response = await fetch("/v1/explanations", { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    const seconds = (performance.now() - start) / 1000;
    const base = `/v1/explanations/${encodeURIComponent(result.id)}`;
    const [overlay, crop] = await Promise.all([fetchBlob(`${base}/overlay.png`), fetchBlob(`${base}/crop.png`)]);
    state.urls.forEach((u) => URL.revokeObjectURL(u));
    state.urls = [URL.createObjectURL(overlay)];
    state.crop = await createImageBitmap(crop);
    state.masks = (result.masks_rle || []).map(decodeMask);
    state.result = result;
    $("overlay").src = state.urls[0];
    drawBars(result);
    drawFacts(result, seconds);
    drawCrop(null);
    $("result").hidden = false;
    document.body.dataset.resultId = result.id;
    setStatus(`Explained in ${seconds.toFixed(2)} s: ${result.num_concepts} concepts, ` +
      `${result.num_evaluations} classifier evaluations.`);
  } catch (error) {
    setStatus(String(error.message || error), true);
  } finally {
    $("go").disabled = false;
  }
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", explain);
  for (const name of ($("method").dataset.methods || "").split(",").filter(Boolean)) {
    const option = document.createElement("option");
    option.value = name; option.textContent = name;
    $("method").appendChild(option);
  }
}

setUp();
