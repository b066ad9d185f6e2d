// GLEE app page: plain JavaScript, no framework, nothing loaded from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  image: null,        // image-tab upload {id, url, width, height, name}
  video: null,        // video-tab upload
  chatImage: null,    // chat-tab upload
  history: [],        // chat turns sent back to the model
  videoTimer: null,
};

// ------------------------------------------------------------------ helpers
async function api(path, opts = {}) {
  const init = { method: opts.json !== undefined || opts.body !== undefined ? "POST" : "GET", headers: {} };
  if (opts.json !== undefined) {
    init.body = JSON.stringify(opts.json);
    init.headers["Content-Type"] = "application/json";
  } else if (opts.body !== undefined) {
    init.body = opts.body;
    init.headers["Content-Type"] = "application/octet-stream";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new Error(`the server did not answer (${err.message}); is it still running?`);
  }
  let data = null;
  try { data = await resp.json(); } catch (err) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.error) || `request failed: HTTP ${resp.status}`);
  return data;
}

function setStatus(tab, text, kind = "") {
  const el = $(`${tab}-status`);
  el.textContent = text;
  el.className = `status ${kind}`;
  el.dataset.state = kind || "idle";
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${url}`));
    img.src = url;
  });
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "style") Object.assign(node.style, v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const mb = (bytes) => (bytes / (1024 * 1024)).toFixed(bytes < 1024 * 1024 ? 2 : 1);
const selected = (name) => document.querySelector(`input[name="${name}"]:checked`).value;

async function uploadFile(file, kind) {
  const limit = state.info.limits.max_upload_bytes;
  if (file.size > limit) {
    throw new Error(`'${file.name}' is ${mb(file.size)} MB; this server takes files up to ${mb(limit)} MB`);
  }
  return api(`/api/upload?kind=${kind}&name=${encodeURIComponent(file.name)}`, { body: file });
}

// ------------------------------------------------------------------ tabs, models, banner
function showTab(name) {
  for (const btn of document.querySelectorAll(".tab")) btn.classList.toggle("active", btn.dataset.tab === name);
  for (const page of document.querySelectorAll(".tab-page")) page.hidden = page.id !== `tab-${name}`;
  updateBanner();
}
for (const btn of document.querySelectorAll(".tab")) btn.addEventListener("click", () => showTab(btn.dataset.tab));

function modelInfo(kind) {
  const id = $(`${kind}-model`).value;
  return state.info.models[kind].find((m) => m.id === id);
}

function updateBanner() {
  if (!state.info) return;
  const names = { glee: "GLEE model", bridge: "chat bridge" };
  const untrained = ["glee", "bridge"].filter((kind) => { const m = modelInfo(kind); return m && !m.trained; });
  const banner = $("banner");
  banner.hidden = untrained.length === 0;
  banner.textContent = untrained.length === 0 ? "" :
    `⚠ Untrained demo weights: the selected ${untrained.map((k) => names[k]).join(" and ")} ` +
    `${untrained.length > 1 ? "are random tiny models" : "is a random tiny model"}, so masks, scores and ` +
    "answers are meaningless. Start the app with --glee PATH / --bridge DIR to use trained weights.";
}

async function loadInfo() {
  state.info = await api("/api/info");
  for (const kind of ["glee", "bridge"]) {
    const select = $(`${kind}-model`);
    select.replaceChildren(...state.info.models[kind].map((m) => el("option", { value: m.id, text: m.label })));
    select.addEventListener("change", updateBanner);
  }
  for (const select of document.querySelectorAll(".sample-select")) {
    const samples = state.info.samples.filter((s) => s.kind === select.dataset.kind);
    if (!samples.length) select.replaceChildren(el("option", { value: "", text: "none installed" }));
    for (const s of samples) select.append(el("option", { value: s.name, text: s.label }));
  }
  const l = state.info.limits;
  $("footer").textContent = `Limits: uploads up to ${mb(l.max_upload_bytes)} MB · videos up to ` +
    `${l.max_video_seconds} s / ${l.max_video_frames} frames · one model run at a time, ` +
    `up to ${l.max_queue} waiting.`;
  updateBanner();
}

// ------------------------------------------------------------------ a canvas that shows an image and takes prompts
class PromptCanvas {
  constructor(canvas, { tool, single = false, onChange = () => {} }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.tool = tool;          // () => "pos" | "neg" | "box"
    this.single = single;      // one positive point only (video first-frame click)
    this.onChange = onChange;
    this.img = null;
    this.clear();
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  }
  clear() { this.points = []; this.negatives = []; this.boxes = []; this.drag = null; this.draw(); }
  async show(url, maxHeight = 560) {
    this.img = await loadImage(url);
    const wrap = this.canvas.parentElement;
    const scale = Math.min(1, (wrap.clientWidth - 2) / this.img.naturalWidth, maxHeight / this.img.naturalHeight);
    this.canvas.width = Math.round(this.img.naturalWidth * scale);
    this.canvas.height = Math.round(this.img.naturalHeight * scale);
    this.clear();
  }
  pos(e) {  // event -> original image pixels
    const r = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - r.left) / r.width) * this.img.naturalWidth;
    const y = ((e.clientY - r.top) / r.height) * this.img.naturalHeight;
    return [Math.min(Math.max(x, 0), this.img.naturalWidth - 1), Math.min(Math.max(y, 0), this.img.naturalHeight - 1)];
  }
  down(e) {
    if (!this.img) return;
    this.drag = { start: this.pos(e), end: this.pos(e), button: e.button };
  }
  move(e) {
    if (!this.drag) return;
    this.drag.end = this.pos(e);
    this.draw();
  }
  up(e) {
    if (!this.drag) return;
    const { start, button } = this.drag;
    const end = this.pos(e);
    this.drag = null;
    const tool = button === 2 ? "neg" : this.tool();
    const moved = Math.hypot(end[0] - start[0], end[1] - start[1]) * (this.canvas.width / this.img.naturalWidth);
    if (tool === "box") {
      if (moved >= 4) {
        this.boxes.push([Math.min(start[0], end[0]), Math.min(start[1], end[1]),
          Math.max(start[0], end[0]), Math.max(start[1], end[1])].map((v) => Math.round(v)));
      }
    } else if (this.single) {
      this.points = [end.map(Math.round)];
    } else {
      (tool === "neg" ? this.negatives : this.points).push(end.map(Math.round));
    }
    this.draw();
    this.onChange();
  }
  draw() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!this.img) return;
    ctx.drawImage(this.img, 0, 0, canvas.width, canvas.height);
    const s = canvas.width / this.img.naturalWidth;
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#ffdc00";
    for (const [x1, y1, x2, y2] of this.boxes) ctx.strokeRect(x1 * s, y1 * s, (x2 - x1) * s, (y2 - y1) * s);
    if (this.drag && this.tool() === "box") {
      const [a, b] = [this.drag.start, this.drag.end];
      ctx.setLineDash([5, 4]);
      ctx.strokeRect(a[0] * s, a[1] * s, (b[0] - a[0]) * s, (b[1] - a[1]) * s);
      ctx.setLineDash([]);
    }
    const dot = (x, y, color) => {
      ctx.beginPath();
      ctx.arc(x * s, y * s, 6, 0, 2 * Math.PI);
      ctx.fillStyle = color;
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    };
    for (const [x, y] of this.points) dot(x, y, "#28c83c");
    for (const [x, y] of this.negatives) dot(x, y, "#dc2828");
  }
}

function wireTaskRadios(tab) {
  const page = $(`tab-${tab}`);
  const update = () => {
    const task = selected(`${tab}-task`);
    for (const row of page.querySelectorAll(".task")) row.hidden = !row.classList.contains(`task-${task}`);
  };
  for (const r of page.querySelectorAll(`input[name="${tab}-task"]`)) r.addEventListener("change", update);
  update();
}

function wireSlider(id, digits) {
  const input = $(id);
  const out = $(`${id}-out`);
  const show = () => { out.textContent = Number(input.value).toFixed(digits); };
  input.addEventListener("input", show);
  show();
}

// ------------------------------------------------------------------ image mode
const imageCanvas = new PromptCanvas($("image-canvas"), { tool: () => selected("image-tool") });

async function setImage(upload) {
  state.image = upload;
  $("image-placeholder").hidden = true;
  await imageCanvas.show(upload.url);
  $("image-run").disabled = false;
}

async function receive(tab, promise, onUpload) {
  setStatus(tab, "uploading…", "busy");
  try {
    const upload = await promise;
    await onUpload(upload);
    setStatus(tab, `${upload.name}: ${upload.width}×${upload.height}` +
      (upload.kind === "video" ? `, ${upload.frames} frames at ${Number(upload.fps).toFixed(1)} fps` : ""));
  } catch (err) {
    setStatus(tab, err.message, "error");
  }
}

$("image-file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (file) receive("image", uploadFile(file, "image"), setImage);
});
$("image-sample").addEventListener("change", (e) => {
  if (e.target.value) receive("image", api("/api/sample", { json: { name: e.target.value } }), setImage);
});
$("image-clear").addEventListener("click", () => imageCanvas.clear());
wireTaskRadios("image");
wireSlider("image-threshold", 2);
wireSlider("image-topk", 0);

$("image-run").addEventListener("click", async () => {
  if (!state.image) return;
  const task = selected("image-task");
  const body = {
    image: state.image.id, model: $("glee-model").value, task,
    threshold: Number($("image-threshold").value), top_k: Number($("image-topk").value),
  };
  if (task === "classes") body.classes = $("image-classes").value;
  if (task === "expression") body.expression = $("image-expression").value;
  if (task === "prompts") {
    Object.assign(body, { points: imageCanvas.points, negative_points: imageCanvas.negatives, boxes: imageCanvas.boxes });
  }
  $("image-run").disabled = true;
  setStatus("image", "running the model…", "busy");
  try {
    const r = await api("/api/image", { json: body });
    const overlay = $("image-overlay");
    await new Promise((resolve) => { overlay.onload = resolve; overlay.onerror = resolve; overlay.src = r.overlay; });
    overlay.hidden = false;
    const rows = r.instances.map((inst, i) => el("tr", {}, [
      el("td", {}, [el("span", { class: "swatch", style: { background: inst.color } })]),
      el("td", { text: inst.label }), el("td", { text: inst.score.toFixed(3) }),
      el("td", { text: inst.box.map((v) => v.toFixed(0)).join(", ") }),
      el("td", { text: inst.area === null ? "–" : String(inst.area) }),
    ]));
    $("image-table").querySelector("tbody").replaceChildren(...rows);
    $("image-table").hidden = rows.length === 0;
    const coco = $("image-coco");
    coco.href = `${r.coco}?download=1`;
    coco.setAttribute("download", r.coco_name);
    coco.hidden = false;
    const n = r.instances.length;
    setStatus("image", `${n} instance${n === 1 ? "" : "s"} · model ${r.queue.ran_s.toFixed(2)} s` +
      (r.queue.waited_s > 0.05 ? ` (waited ${r.queue.waited_s.toFixed(1)} s in the queue)` : "") +
      (n === 0 ? " · nothing above the threshold: lower it or change the prompt" : ""), "done");
  } catch (err) {
    setStatus("image", err.message, "error");
  } finally {
    $("image-run").disabled = false;
  }
});

// ------------------------------------------------------------------ video mode
const videoCanvas = new PromptCanvas($("video-canvas"), { tool: () => "pos", single: true });

async function setVideo(upload) {
  state.video = upload;
  $("video-placeholder").hidden = true;
  await videoCanvas.show(upload.url);
  $("video-run").disabled = false;
}

$("video-file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (file) receive("video", uploadFile(file, "video"), setVideo);
});
$("video-sample").addEventListener("change", (e) => {
  if (e.target.value) receive("video", api("/api/sample", { json: { name: e.target.value } }), setVideo);
});
wireTaskRadios("video");
wireSlider("video-threshold", 2);

function showVideoResult(r) {
  const player = $("video-player");
  player.poster = r.preview;
  player.src = r.video;
  player.hidden = false;
  const rows = r.tracks.map((t) => el("tr", {}, [
    el("td", {}, [el("span", { class: "swatch", style: { background: t.color || "#888" } })]),
    el("td", { text: `#${t.id}` }), el("td", { text: t.label }), el("td", { text: String(t.frames) }),
    el("td", { text: t.best.toFixed(3) }),
  ]));
  $("video-table").querySelector("tbody").replaceChildren(...rows);
  $("video-table").hidden = rows.length === 0;
  for (const [id, url, name] of [["video-mp4", r.video, "tracks.mp4"], ["video-mot", r.mot, "tracks.mot.txt"],
    ["video-ytvis", r.ytvis, "tracks.ytvis.json"]]) {
    $(id).href = `${url}?download=1`;
    $(id).setAttribute("download", name);
  }
  $("video-downloads").hidden = false;
}

async function pollVideo(jobId) {
  const bar = $("video-progress");
  const text = $("video-progress-text");
  try {
    const s = await api(`/api/jobs/${jobId}`);
    if (s.status === "queued") {
      text.textContent = `waiting in the queue (${s.position} ahead)`;
    } else if (s.total) {
      bar.max = s.total;
      bar.value = s.done;
      text.textContent = `frame ${s.done} / ${s.total}`;
    }
    if (s.status === "done") {
      bar.value = bar.max;
      showVideoResult(s.result);
      const n = s.result.tracks.length;
      setStatus("video", `${n} track${n === 1 ? "" : "s"} over ${s.result.frames} frames · ` +
        `${s.queue.ran_s.toFixed(1)} s`, "done");
      $("video-run").disabled = false;
      return;
    }
    if (s.status === "error") {
      setStatus("video", s.error, "error");
      $("video-run").disabled = false;
      return;
    }
  } catch (err) {
    setStatus("video", err.message, "error");
    $("video-run").disabled = false;
    return;
  }
  state.videoTimer = setTimeout(() => pollVideo(jobId), 300);
}

$("video-run").addEventListener("click", async () => {
  if (!state.video) return;
  const task = selected("video-task");
  const body = { video: state.video.id, model: $("glee-model").value, task,
    threshold: Number($("video-threshold").value) };
  if (task === "classes") body.classes = $("video-classes").value;
  if (task === "expression") body.expression = $("video-expression").value;
  if (task === "click") body.points = videoCanvas.points;
  $("video-run").disabled = true;
  $("video-player").hidden = true;
  $("video-downloads").hidden = true;
  const bar = $("video-progress");
  bar.hidden = false;
  bar.value = 0;
  bar.max = state.video.frames;
  setStatus("video", "tracking…", "busy");
  try {
    const job = await api("/api/video", { json: body });
    clearTimeout(state.videoTimer);
    pollVideo(job.job);
  } catch (err) {
    setStatus("video", err.message, "error");
    $("video-run").disabled = false;
  }
});

// ------------------------------------------------------------------ chat mode
async function setChatImage(upload) {
  state.chatImage = upload;
  state.history = [];
  $("chat-log").replaceChildren();
  const img = $("chat-image");
  await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = upload.url; });
  img.hidden = false;
  $("chat-placeholder").hidden = true;
  $("chat-send").disabled = false;
}

$("chat-file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (file) receive("chat", uploadFile(file, "image"), setChatImage);
});
$("chat-sample").addEventListener("change", (e) => {
  if (e.target.value) receive("chat", api("/api/sample", { json: { name: e.target.value } }), setChatImage);
});
$("chat-reset").addEventListener("click", () => { state.history = []; $("chat-log").replaceChildren(); });

function answerNode(r) {
  // the answer's text with each [SEG] replaced by a chip in its mask's colour, the overlay beside it
  const text = el("div", { class: "text" });
  const parts = r.text.split("[SEG]");
  parts.forEach((part, i) => {
    text.append(document.createTextNode(part));
    if (i < parts.length - 1) {
      const seg = r.segments[i];
      text.append(el("span", { class: "seg", style: { background: seg ? seg.color : "#ccc" },
        title: seg ? `${seg.area} pixels` : "", text: `mask ${i + 1}` }));
    }
  });
  if (!r.segments.length) text.append(el("div", { class: "hint", text: "(no [SEG] in this answer: no mask)" }));
  if (!r.finished) text.append(el("div", { class: "hint", text: "(the answer hit the length limit)" }));
  const children = [text];
  if (r.segments.length) children.push(el("img", { src: r.overlay, alt: "masks of this answer" }));
  return el("div", { class: "msg assistant" }, children);
}

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("chat-message");
  const message = input.value.trim();
  if (!message || !state.chatImage) return;
  const log = $("chat-log");
  log.append(el("div", { class: "msg user", text: message }));
  input.value = "";
  $("chat-send").disabled = true;
  setStatus("chat", "the model is answering…", "busy");
  try {
    const r = await api("/api/chat", { json: { image: state.chatImage.id, model: $("bridge-model").value,
      message, history: state.history } });
    log.append(answerNode(r));
    state.history.push({ role: "user", content: message }, { role: "assistant", content: r.text });
    const n = r.segments.length;
    setStatus("chat", `${n} mask${n === 1 ? "" : "s"} · ${r.queue.ran_s.toFixed(2)} s`, "done");
  } catch (err) {
    setStatus("chat", err.message, "error");
  } finally {
    $("chat-send").disabled = false;
    log.scrollTop = log.scrollHeight;
  }
});

loadInfo().catch((err) => setStatus("image", err.message, "error"));
