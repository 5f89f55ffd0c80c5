// instar's search page: pick or drop a photo, drag a box on it, search, page through the hits; every hit's box
// (original pixels, as the API returns it) is drawn over its thumbnail in percentages of the image, so it stays
// in place at any displayed size. No build step, no dependencies.
"use strict";

// hits per page: 20, or ?per_page=N (1..100) in the page's address
const PER_PAGE = (() => {
  const n = parseInt(new URLSearchParams(window.location.search).get("per_page"), 10);
  return n >= 1 && n <= 100 ? n : 20;
})();
const MIN_DRAG = 4; // CSS pixels: a shorter drag is a click, which clears the box

const $ = (id) => document.getElementById(id);
const state = {
  file: null,       // the picked File
  objectUrl: null,
  box: null,        // [x0, y0, x1, y1] in the photo's original pixels, or null (whole photo)
  drag: null,       // {x, y} start of a drag, in canvas CSS pixels
  hits: [],
  page: 0,
  viewing: -1,      // index into hits of the hit shown large
  maxK: 1000,
};

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function errorText(body, status) {
  if (body && typeof body === "object" && body.error) {
    let detail = body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => (d.field ? d.field + ": " : "") + d.message).join("; ");
    return `${body.error}${detail ? ": " + detail : ""}`;
  }
  return `HTTP ${status}`;
}

// --- index information and search settings ------------------------------------------------------------------
async function loadStats() {
  try {
    const r = await fetch("/stats");
    const s = await r.json();
    if (!r.ok) throw new Error(errorText(s, r.status));
    $("index-info").textContent = `${s.images} images · preset ${s.preset.name}`;
    state.maxK = s.limits.max_k;
    const k = $("k");
    k.max = String(s.limits.max_k);
    k.value = String(Math.min(s.preset.sections.search.k, s.limits.max_k));
    for (const section of ["rerank", "expansion"]) {
      const select = $(section);
      select.replaceChildren(new Option(`preset (${s.preset.sections[section].method})`, ""));
      for (const name of s.search_choices[section]) select.add(new Option(name, name));
    }
  } catch (e) {
    $("index-info").textContent = "index information unavailable";
    setStatus(String(e.message || e), true);
  }
}

// --- the query photo and its box ----------------------------------------------------------------------------
function pickFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setStatus(`${file.name}: not an image`, true);
    return;
  }
  state.file = file;
  state.box = null;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  const photo = $("photo");
  photo.onload = () => {
    $("stage").hidden = false;
    $("search").disabled = false;
    fitCanvas();
    showBox();
    setStatus("");
  };
  photo.onerror = () => setStatus(`${file.name}: this browser cannot show it (the server may still read it)`, true);
  photo.src = state.objectUrl;
}

function fitCanvas() {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(rect.width * dpr));
  canvas.height = Math.max(1, Math.round(rect.height * dpr));
  draw();
}

// canvas CSS pixels <-> original photo pixels
function scale() {
  const photo = $("photo");
  const rect = $("canvas").getBoundingClientRect();
  return { sx: photo.naturalWidth / rect.width, sy: photo.naturalHeight / rect.height, rect };
}

function draw(live) {
  const canvas = $("canvas");
  const g = canvas.getContext("2d");
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, canvas.width, canvas.height);
  let r = live;
  if (!r && state.box) {
    const { sx, sy } = scale();
    r = [state.box[0] / sx, state.box[1] / sy, state.box[2] / sx, state.box[3] / sy];
  }
  if (!r) return;
  const dpr = canvas.width / canvas.getBoundingClientRect().width;
  g.scale(dpr, dpr);
  const [x0, y0, x1, y1] = r;
  g.fillStyle = "rgba(0, 0, 0, 0.45)"; // dim what is outside the box
  const w = canvas.width / dpr, h = canvas.height / dpr;
  g.fillRect(0, 0, w, y0);
  g.fillRect(0, y1, w, h - y1);
  g.fillRect(0, y0, x0, y1 - y0);
  g.fillRect(x1, y0, w - x1, y1 - y0);
  g.lineWidth = 2;
  g.strokeStyle = "#36c";
  g.strokeRect(x0, y0, x1 - x0, y1 - y0);
}

function showBox() {
  const stage = $("stage");
  if (state.box) {
    stage.dataset.box = state.box.join(",");
    $("box-text").textContent = `box ${state.box.join(", ")} (photo pixels, of ${$("photo").naturalWidth}×${$("photo").naturalHeight})`;
  } else {
    delete stage.dataset.box;
    $("box-text").textContent = "no box: the whole photo is the query (drag on it to draw one)";
  }
  $("clear-box").disabled = !state.box;
  draw();
}

function canvasPoint(ev) {
  const rect = $("canvas").getBoundingClientRect();
  return {
    x: Math.min(Math.max(ev.clientX - rect.left, 0), rect.width),
    y: Math.min(Math.max(ev.clientY - rect.top, 0), rect.height),
  };
}

function corners(a, b) {
  return [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
}

function onPointerDown(ev) {
  if (ev.button !== 0 && ev.pointerType === "mouse") return;
  ev.preventDefault();
  $("canvas").setPointerCapture(ev.pointerId);
  state.drag = canvasPoint(ev);
}

function onPointerMove(ev) {
  if (!state.drag) return;
  ev.preventDefault();
  draw(corners(state.drag, canvasPoint(ev)));
}

function onPointerUp(ev) {
  if (!state.drag) return;
  const [x0, y0, x1, y1] = corners(state.drag, canvasPoint(ev));
  state.drag = null;
  if (x1 - x0 < MIN_DRAG || y1 - y0 < MIN_DRAG) {
    state.box = null;
  } else {
    const { sx, sy } = scale();
    const W = $("photo").naturalWidth, H = $("photo").naturalHeight;
    state.box = [Math.max(0, Math.round(x0 * sx)), Math.max(0, Math.round(y0 * sy)),
                 Math.min(W, Math.round(x1 * sx)), Math.min(H, Math.round(y1 * sy))];
  }
  showBox();
}

// --- search and hits ------------------------------------------------------------------------------------------
async function runSearch(ev) {
  ev.preventDefault();
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "query");
  if (state.box) form.append("box", state.box.join(","));
  const k = parseInt($("k").value, 10);
  if (!(k >= 1 && k <= state.maxK)) {
    setStatus(`hits: a whole number from 1 to ${state.maxK}`, true);
    return;
  }
  form.append("k", String(k));
  for (const section of ["rerank", "expansion"]) if ($(section).value) form.append(section, $(section).value);
  $("search").disabled = true;
  setStatus("searching…");
  const started = performance.now();
  try {
    const r = await fetch("/search", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(errorText(body, r.status));
    const total = performance.now() - started;
    state.hits = body.hits;
    state.page = 0;
    $("summary").textContent = `${body.hits.length} hits in ${Math.round(total)} ms (server ${Math.round(body.took_ms)} ms)`;
    $("summary").dataset.tookMs = String(body.took_ms);
    setStatus("");
    renderPage();
  } catch (e) {
    setStatus(String(e.message || e), true);
  } finally {
    $("search").disabled = false;
  }
}

function pct(v, of) {
  return `${(100 * v / of).toFixed(4)}%`;
}

function placeBox(el, hit) {
  const [x0, y0, x1, y1] = hit.box;
  el.style.left = pct(x0, hit.width);
  el.style.top = pct(y0, hit.height);
  el.style.width = pct(x1 - x0, hit.width);
  el.style.height = pct(y1 - y0, hit.height);
  el.dataset.box = hit.box.join(",");
}

function hitCard(hit, i) {
  const fig = document.createElement("figure");
  fig.className = "hit";
  fig.dataset.id = String(hit.id);
  fig.dataset.rank = String(hit.rank);
  const frame = document.createElement("button");
  frame.type = "button";
  frame.className = "frame";
  frame.style.aspectRatio = `${hit.width} / ${hit.height}`;
  frame.setAttribute("aria-label", `open hit ${hit.rank}: ${hit.name}`);
  const img = document.createElement("img");
  img.src = hit.thumbnail_url;
  img.alt = hit.name;
  img.loading = "lazy";
  const box = document.createElement("div");
  box.className = "box";
  placeBox(box, hit);
  frame.append(img, box);
  frame.addEventListener("click", () => openViewer(i));
  const cap = document.createElement("figcaption");
  const rank = document.createElement("b");
  rank.textContent = `#${hit.rank}`;
  cap.append(rank, ` ${hit.score.toFixed(4)} `, document.createElement("br"));
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = hit.name;
  cap.append(name);
  fig.append(frame, cap);
  return fig;
}

function renderPage() {
  const pages = Math.max(1, Math.ceil(state.hits.length / PER_PAGE));
  state.page = Math.min(Math.max(0, state.page), pages - 1);
  const first = state.page * PER_PAGE;
  const cards = state.hits.slice(first, first + PER_PAGE).map((h, j) => hitCard(h, first + j));
  $("grid").replaceChildren(...cards);
  $("pager").hidden = state.hits.length <= PER_PAGE;
  $("page-info").textContent = `page ${state.page + 1} of ${pages} (hits ${first + 1}–${first + cards.length})`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
}

// --- one hit, large ---------------------------------------------------------------------------------------------
function openViewer(i) {
  const hit = state.hits[i];
  if (!hit) return;
  state.viewing = i;
  const frame = $("viewer-frame");
  frame.style.aspectRatio = `${hit.width} / ${hit.height}`;
  // as large as fits: 94 % of the width, 80 % of the height
  const w = Math.min(window.innerWidth * 0.94, window.innerHeight * 0.8 * hit.width / hit.height);
  frame.style.width = `${Math.floor(w)}px`;
  $("viewer-img").src = `${hit.thumbnail_url}?size=1024`;
  $("viewer-img").alt = hit.name;
  placeBox($("viewer-box"), hit);
  $("viewer-caption").textContent = `#${hit.rank} · ${hit.score.toFixed(4)} · ${hit.name} · box ${hit.box.map((v) => Math.round(v)).join(", ")}`;
  $("viewer-original").href = hit.image_url;
  $("viewer-prev").disabled = i === 0;
  $("viewer-next").disabled = i >= state.hits.length - 1;
  $("viewer").hidden = false;
  $("viewer-close").focus();
}

function closeViewer() {
  $("viewer").hidden = true;
  state.viewing = -1;
}

function stepViewer(d) {
  const i = state.viewing + d;
  if (i < 0 || i >= state.hits.length) return;
  const page = Math.floor(i / PER_PAGE);
  if (page !== state.page) {
    state.page = page;
    renderPage();
  }
  openViewer(i);
}

// --- wiring -------------------------------------------------------------------------------------------------------
function init() {
  $("file").addEventListener("change", (ev) => pickFile(ev.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    pickFile(ev.dataTransfer.files[0]);
  });
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointercancel", () => { state.drag = null; draw(); });
  $("clear-box").addEventListener("click", () => { state.box = null; showBox(); });
  $("search-form").addEventListener("submit", runSearch);
  $("prev").addEventListener("click", () => { state.page -= 1; renderPage(); });
  $("next").addEventListener("click", () => { state.page += 1; renderPage(); });
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer-prev").addEventListener("click", () => stepViewer(-1));
  $("viewer-next").addEventListener("click", () => stepViewer(1));
  $("viewer").addEventListener("click", (ev) => { if (ev.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (ev) => {
    if ($("viewer").hidden) return;
    if (ev.key === "Escape") closeViewer();
    if (ev.key === "ArrowLeft") stepViewer(-1);
    if (ev.key === "ArrowRight") stepViewer(1);
  });
  window.addEventListener("resize", () => { if (state.file) fitCanvas(); });
  loadStats();
}

init();
