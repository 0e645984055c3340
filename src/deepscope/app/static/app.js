// deepscope web app: plain JavaScript over the JSON API (see /docs). No build step.
"use strict";

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(url, opts);
  } catch (e) {
    throw { error: "the deepscope server does not answer", fix: "check that 'deepscope app' is still running, then reload the page" };
  }
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : null;
  if (!r.ok) throw data || { error: `the server answered ${r.status}` };
  return data;
}

function errorBox(err) {
  const e = err && err.error ? err : { error: String(err && err.message ? err.message : err) };
  return h("div", { class: "error-box", role: "alert" },
    e.path ? `${e.path}: ` : "", e.error,
    e.fix ? h("span", { class: "fix" }, "What to do: " + e.fix) : null);
}

const q = (params) => "?" + new URLSearchParams(params).toString();
const thumbUrl = (path, extra) => "/api/thumb" + q({ path, size: 160, ...(extra || {}) });
function fmtTime(s) {
  if (s === null || s === undefined || isNaN(s)) return "–";
  s = Math.max(0, Math.round(s));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return hh ? `${hh} h ${mm} min` : mm ? `${mm} min ${ss} s` : `${ss} s`;
}
const fmtNum = (v, d = 4) => (v === null || v === undefined ? "–" : Number(v).toPrecision(d));
function metricText(m) { return m ? `${m.name}: ${fmtNum(m.value)}${m.unit ? " " + m.unit : ""}` : "–"; }

let TASKS = null;
async function tasks() { if (!TASKS) TASKS = await api("GET", "/api/tasks"); return TASKS; }
async function taskInfo(name) { return (await tasks()).find((t) => t.name === name) || {}; }

let pollTimer = null;
function stopPolling() { if (pollTimer) clearTimeout(pollTimer); pollTimer = null; }

const main = () => document.getElementById("main");

// ---------------------------------------------------------------- wizard state

const wiz = JSON.parse(sessionStorage.getItem("deepscope-wizard") || "{}");
function saveWiz() { sessionStorage.setItem("deepscope-wizard", JSON.stringify(wiz)); }

function stepper(active) {
  const names = ["1 Task", "2 Data", "3 Settings", "4 Train", "5 Quality control", "6 Apply", "7 Share"];
  return h("div", { class: "steps" }, names.map((n, i) =>
    h("span", { class: i === active ? "on" : i < active ? "done" : "" }, n)));
}

// ---------------------------------------------------------------- folder picker

function folderPicker(label, initial, onChoose, testid) {
  const chosen = h("span", { class: "chosen", "data-testid": `${testid}-chosen` }, initial || "(none chosen)");
  const pathEl = h("div", { class: "path" });
  const list = h("ul");
  const actions = h("div", { class: "row" });
  const box = h("div", { class: "picker", "data-testid": testid },
    h("div", {}, h("b", {}, label + ": "), chosen), pathEl, actions, list);
  async function load(path) {
    try {
      const d = await api("GET", "/api/browse" + (path ? q({ path }) : ""));
      pathEl.textContent = d.path ? "Looking in " + d.path : "Allowed folders (start 'deepscope app --data-root FOLDER' to add others)";
      const up = d.path ? h("button", { class: "secondary", onclick: () => load(d.parent || "") }, "⬆ Up") : null;
      const use = d.path ? h("button", {
        "data-testid": `${testid}-use`,
        onclick: () => { chosen.textContent = d.path; onChoose(d.path); },
      }, `Use this folder (${d.images.length} image${d.images.length === 1 ? "" : "s"})`) : null;
      actions.replaceChildren(...[up, use].filter(Boolean));
      list.replaceChildren(...d.folders.map((f) =>
        h("li", { onclick: () => load(f.path), "data-name": f.name },
          "▸ " + f.name, f.images !== null ? h("span", { class: "muted" }, ` — ${f.images} image${f.images === 1 ? "" : "s"}`) : null)),
        ...d.images.slice(0, 8).map((i) => h("li", { class: "muted" }, "▫ " + i.name)),
        ...(d.images.length > 8 ? [h("li", { class: "muted" }, `… and ${d.images.length - 8} more images`)] : []));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  }
  load(initial ? initial.replace(/\/[^/]*$/, "") : "");
  return box;
}

// ---------------------------------------------------------------- 1 task

async function viewTasks() {
  const all = await tasks();
  main().replaceChildren(stepper(0), h("h1", {}, "What do you want to do?"),
    h("p", { class: "muted" }, "Choose a task. Each card says what it is for and which images it needs; the picture shows what goes in (left) and what comes out (right)."),
    h("div", { class: "tasks" }, all.map((t) => h("div", {
      class: "card task", tabindex: 0, "data-testid": `task-${t.name}`,
      onclick: () => { Object.assign(wiz, { task: t.name, images: null, targets: null, settings: {} }); saveWiz(); location.hash = "#/new/data"; },
    }, h("h2", {}, t.title), h("img", { src: `/api/tasks/${t.name}/example.png`, alt: `example of ${t.title}` }),
      h("p", {}, t.description), h("p", { class: "muted" }, "Needs: " + t.data_needed)))));
}

// ---------------------------------------------------------------- 2 data

function thumbGrid(items, labels, projection) {
  return h("div", { class: "thumbs", "data-testid": "thumbs" }, items.slice(0, 12).map(([img, tgt]) => {
    const name = img.split("/").pop();
    if (!tgt) return h("div", { class: "thumb" }, h("img", { src: thumbUrl(img, { projection }), alt: name }), name);
    const right = labels ? thumbUrl(img, { projection, labels: tgt }) : thumbUrl(tgt, { projection });
    return h("div", { class: "thumb" }, h("div", { class: "pair" },
      h("img", { src: thumbUrl(img, { projection }), alt: name }), h("img", { src: right, alt: "target of " + name })),
      labels ? `${name} — image | mask overlay` : `${name} — input | target`);
  }));
}

function findingsList(report) {
  const ok = report.ok;
  return h("div", { "data-testid": "findings" },
    h("p", { class: "verdict " + (ok ? "ok" : "bad") }, (ok ? "✔ " : "✖ ") + report.verdict),
    h("ul", { class: "findings" }, report.findings.map((f) => h("li", { class: f.severity },
      h("b", {}, f.severity === "error" ? "Problem" : "Warning"), ": ", f.path ? h("code", {}, f.path) : null, f.path ? " — " : "",
      f.problem, h("div", { class: "fix" }, "What to do: " + f.fix)))),
    report.notes && report.notes.length ? h("ul", {}, report.notes.map((n) => h("li", { class: "muted" }, n))) : null);
}

async function viewData() {
  if (!wiz.task) { location.hash = "#/new"; return; }
  const t = await taskInfo(wiz.task);
  const result = h("div");
  const next = h("button", { disabled: true, "data-testid": "to-settings", onclick: () => { location.hash = "#/new/settings"; } }, "Next: settings →");
  let projection = "middle";
  async function check() {
    result.replaceChildren(h("p", { class: "muted" }, "Checking every file…"));
    try {
      const report = await api("POST", "/api/validate", { task: wiz.task, images: wiz.images, targets: wiz.targets, settings: wiz.settings || {} });
      const proj = h("select", { onchange: (e) => { projection = e.target.value; grid.replaceWith(grid = thumbGrid(report.items, t.targets_are_labels, projection)); } },
        h("option", { value: "middle" }, "Z-stacks: middle slice"), h("option", { value: "max" }, "Z-stacks: maximum projection"));
      let grid = thumbGrid(report.items.length ? report.items : [], t.targets_are_labels, projection);
      result.replaceChildren(findingsList(report), h("div", { class: "row" }, h("b", {}, `Images (${report.items.length} usable, first 12 shown)`), proj), grid);
      next.disabled = !report.ok;
    } catch (e) { result.replaceChildren(errorBox(e)); next.disabled = true; }
  }
  const checkBtn = h("button", { "data-testid": "check-data", disabled: !wiz.images || (t.needs_targets && !wiz.targets), onclick: check }, "Check the data");
  const refresh = () => { saveWiz(); checkBtn.disabled = !wiz.images || (t.needs_targets && !wiz.targets); next.disabled = true; };
  main().replaceChildren(stepper(1), h("h1", {}, `${t.title}: choose your data`),
    h("p", { class: "muted" }, "Needs: " + t.data_needed + ". Nothing in these folders is changed."),
    h("div", { class: "card" },
      folderPicker("Images", wiz.images, (p) => { wiz.images = p; refresh(); }, "pick-images"),
      t.needs_targets ? folderPicker(t.targets_are_labels ? "Masks" : "Targets", wiz.targets, (p) => { wiz.targets = p; refresh(); }, "pick-targets") : null,
      h("div", { class: "row" }, checkBtn, next, h("a", { href: "#/new" }, "← other task"))),
    h("div", { class: "card" }, h("h2", {}, "What the check found"), result));
  if (wiz.images && (!t.needs_targets || wiz.targets)) check();
}

// ---------------------------------------------------------------- 3 settings

function fieldInput(f, value) {
  const id = "f-" + f.key.replace(".", "-");
  const text = (v) => (v === null || v === undefined ? "" : Array.isArray(v) ? v.join(" ") : typeof v === "object" ? JSON.stringify(v) : String(v));
  if (f.kind === "bool") return h("input", { type: "checkbox", id, checked: !!value });
  if (f.kind === "choice") {
    const sel = h("select", { id }, f.nullable ? h("option", { value: "null" }, "(default)") : null,
      f.choices.map((c) => h("option", { value: JSON.stringify(c) }, String(c))));
    sel.value = JSON.stringify(value === undefined ? null : value);
    return sel;
  }
  if (f.kind === "integer" || f.kind === "number") {
    const min = f.minimum ?? f.exclusiveMinimum, max = f.maximum ?? f.exclusiveMaximum;
    return h("input", { type: "number", id, value: text(value), step: f.kind === "integer" ? 1 : "any", min, max, placeholder: f.nullable ? "(none)" : null });
  }
  return h("input", { type: "text", id, value: text(value), placeholder: f.nullable ? "(none)" : null });
}

function readField(f, el) {
  if (f.kind === "bool") return el.checked;
  if (f.kind === "choice") return JSON.parse(el.value);
  const raw = el.value.trim();
  if (raw === "") return null;
  if (f.kind === "integer" || f.kind === "number") return Number(raw);
  if (f.kind === "list") {
    const parts = raw.replace(/^\[|\]$/g, "").split(/[\s,]+/).filter(Boolean);
    return f.items === "integer" || f.items === "number" ? parts.map(Number) : parts.map((p) => p.replace(/^['"]|['"]$/g, ""));
  }
  if (f.kind === "json") { try { return JSON.parse(raw); } catch (e) { return raw; } }
  return raw;
}

async function viewSettings() {
  if (!wiz.task || !wiz.images) { location.hash = "#/new/data"; return; }
  const [form, models] = await Promise.all([api("GET", `/api/tasks/${wiz.task}/form`), api("GET", "/api/models")]);
  const inputs = {};
  const saved = wiz.settings || {};
  const sections = form.sections.map((s) => {
    const row = (f) => {
      const value = f.key in saved ? saved[f.key] : f.default;
      let input;
      if (f.key === "training.start_from") {
        input = h("select", { id: "f-training-start_from" }, h("option", { value: "null" }, "no: start from scratch"),
          models.map((m) => h("option", { value: JSON.stringify(m.path) }, `${m.run} (${m.task})`)));
        input.value = JSON.stringify(value ?? null);
        inputs[f.key] = { f: { ...f, kind: "choice" }, el: input };
      } else {
        input = fieldInput(f, value);
        inputs[f.key] = { f, el: input };
      }
      return h("div", { class: "field" }, h("label", { for: input.id }, f.label), input, h("div", { class: "help" }, f.description));
    };
    const basic = s.fields.filter((f) => !f.advanced), adv = s.fields.filter((f) => f.advanced);
    return h("fieldset", {}, h("legend", {}, s.title), h("div", { class: "muted" }, s.description),
      basic.map(row), adv.length ? h("details", { "data-testid": `advanced-${s.name}` }, h("summary", {}, `Advanced (${adv.length})`), adv.map(row)) : null);
  });
  const dims = inputs["data.spatial_dims"], patch = inputs["data.patch_size"];
  if (dims && patch) dims.el.addEventListener("change", () => {
    patch.el.value = JSON.parse(dims.el.value) === 3 ? "16 64 64" : "64 64";
  });
  function collect() {
    const out = {};
    for (const [key, { f, el }] of Object.entries(inputs)) {
      const v = readField(f, el);
      if (JSON.stringify(v) !== JSON.stringify(f.default ?? null)) out[key] = v;
    }
    return out;
  }
  const msg = h("div", { "data-testid": "settings-message" });
  const name = h("input", { type: "text", id: "run-name", placeholder: `${wiz.task}-<date> (automatic)` });
  async function checkSettings() {
    wiz.settings = collect(); saveWiz();
    try {
      const r = await api("POST", "/api/config", { task: wiz.task, settings: wiz.settings });
      msg.replaceChildren(h("p", { class: "verdict ok" }, "✔ These settings are valid."), h("details", {}, h("summary", {}, "The full settings file (config.yaml)"), h("pre", {}, r.yaml)));
      return true;
    } catch (e) { msg.replaceChildren(errorBox(e)); return false; }
  }
  async function start() {
    if (!(await checkSettings())) return;
    try {
      const r = await api("POST", "/api/runs", { task: wiz.task, images: wiz.images, targets: wiz.targets, settings: wiz.settings, name: name.value.trim() || null });
      location.hash = "#/run/" + encodeURIComponent(r.run);
    } catch (e) { msg.replaceChildren(errorBox(e)); }
  }
  main().replaceChildren(stepper(2), h("h1", {}, `${form.title}: settings`),
    h("p", { class: "muted" }, "The defaults work for most data. Each setting says what it does; rarely needed ones are folded under 'Advanced'. To fine-tune an earlier model, choose it under 'start from'."),
    h("div", { class: "card" }, sections),
    h("div", { class: "card" }, h("div", { class: "row" }, h("label", { for: "run-name" }, "Name of this run"), name),
      h("div", { class: "row" }, h("button", { class: "secondary", onclick: checkSettings }, "Check settings"),
        h("button", { "data-testid": "start-training", onclick: start }, "Start training"), h("a", { href: "#/new/data" }, "← data")), msg));
}

// ---------------------------------------------------------------- charts

function chart(series, ylabel) {
  const W = 640, H = 240, L = 56, R = 12, T = 12, B = 30;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("class", "chart");
  const pts = series.flatMap((s) => s.points).filter((p) => p[1] !== null && isFinite(p[1]));
  const add = (tag, attrs, text) => { const e = document.createElementNS(svg.namespaceURI, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  if (!pts.length) { add("text", { x: W / 2 - 80, y: H / 2 }, "No finished epoch yet"); return svg; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const log = Math.min(...ys) > 0 && Math.max(...ys) / Math.min(...ys) > 10;
  const f = log ? Math.log10 : (v) => v;
  let y0 = f(Math.min(...ys)), y1 = f(Math.max(...ys));
  if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
  const X = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R), Y = (v) => T + (1 - (f(v) - y0) / (y1 - y0)) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4, val = log ? 10 ** v : v;
    add("text", { x: 4, y: Y(val) + 4 }, fmtNum(val, 3));
    add("line", { x1: L, x2: W - R, y1: Y(val), y2: Y(val), stroke: "#eee" });
  }
  const xticks = [...new Set([0, 1, 2, 3, 4].map((i) => Math.round(x0 + ((x1 - x0) * i) / 4)))];
  xticks.forEach((v) => add("text", { x: X(v) - 4, y: H - B + 14 }, String(v)));
  add("text", { x: W / 2 - 20, y: H - 3 }, "epoch");
  add("text", { x: L + 4, y: T + 10 }, ylabel + (log ? " (log scale)" : ""));
  series.forEach((s, i) => {
    const p = s.points.filter((q) => q[1] !== null && isFinite(q[1]));
    if (!p.length) return;
    add("polyline", { points: p.map((q) => `${X(q[0])},${Y(q[1])}`).join(" "), fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dashed ? "5 4" : "" });
    p.forEach((q) => add("circle", { cx: X(q[0]), cy: Y(q[1]), r: 2.5, fill: s.color }));
    add("text", { x: W - R - 170, y: T + 14 + i * 14, fill: s.color }, (s.dashed ? "- - " : "—— ") + s.name);
  });
  return svg;
}

const lossSeries = (history, name, color) => [
  { name: `${name}validation loss`, color, points: history.map((r) => [r.epoch + 1, r.val_loss]) },
  { name: `${name}training loss`, color, dashed: true, points: history.map((r) => [r.epoch + 1, r.train_loss]) },
];

// ---------------------------------------------------------------- run page (4–7)

async function viewRun(name) {
  let d;
  try { d = await api("GET", `/api/runs/${encodeURIComponent(name)}`); } catch (e) { main().replaceChildren(errorBox(e)); return; }
  const t = await taskInfo(d.task);
  const el = {
    status: h("span", { class: "status", "data-testid": "run-status" }),
    words: h("span", { class: "muted" }),
    bar: h("div", { style: "width:0%" }),
    progressText: h("div", { "data-testid": "train-progress" }),
    chart: h("div"),
    preview: h("img", { alt: "preview of the prediction", style: "max-width:100%;display:none", "data-testid": "preview" }),
    previewNote: h("div", { class: "muted" }, "A preview of the model's result on one of your images appears here during training (input left, result right)."),
    trainMsg: h("div"),
    trainButtons: h("div", { class: "row" }),
    qcProgress: h("div", { "data-testid": "qc-progress" }),
    qcMsg: h("div"),
    report: h("div"),
    ckpt: h("div"),
    applyProgress: h("div", { "data-testid": "apply-progress" }),
    applyMsg: h("div"),
    results: h("div", { "data-testid": "results" }),
    share: h("div"),
    exportProgress: h("div", { "data-testid": "export-progress" }),
    exportMsg: h("div"),
    exports: h("div", { "data-testid": "exports" }),
  };
  const qcSel = { images: null, targets: null }, applySel = { input: null, tta: false, int8: false };
  const qcBtn = h("button", { "data-testid": "run-qc", onclick: async () => {
    el.qcMsg.replaceChildren();
    try { await api("POST", `/api/runs/${name}/qc`, qcSel); poll(); } catch (e) { el.qcMsg.replaceChildren(errorBox(e)); }
  } }, "Run quality control");
  const exportSel = {
    authors: h("input", { type: "text", id: "export-authors", "data-testid": "export-authors", placeholder: "Ada Lovelace; Alan Turing", style: "width:320px" }),
    license: h("input", { type: "text", id: "export-license", "data-testid": "export-license", value: "CC-BY-4.0", list: "licences", style: "width:160px" }),
    name: h("input", { type: "text", id: "export-name", placeholder: `${name} (optional)`, style: "width:320px" }),
  };
  const exportBtn = h("button", { "data-testid": "run-export", onclick: async () => {
    el.exportMsg.replaceChildren();
    const body = { authors: exportSel.authors.value.split(";").map((a) => a.trim()).filter((a) => a),
      license: exportSel.license.value, name: exportSel.name.value || null };
    try { await api("POST", `/api/runs/${name}/export`, body); poll(); } catch (e) { el.exportMsg.replaceChildren(errorBox(e)); }
  } }, "Export for Fiji, ilastik and napari (BioImage.IO)");
  const applyBtn = h("button", { "data-testid": "run-apply", onclick: async () => {
    el.applyMsg.replaceChildren();
    try { await api("POST", `/api/runs/${name}/apply`, applySel); poll(); } catch (e) { el.applyMsg.replaceChildren(errorBox(e)); }
  } }, "Apply the model");
  main().replaceChildren(
    h("h1", {}, `Run ${d.name} `, el.status),
    h("p", {}, h("b", {}, t.title || d.task), " on ", h("code", {}, d.images || "?"), d.targets ? [" with ", h("code", {}, d.targets)] : null, " — ", el.words),
    h("div", { class: "card", id: "train" }, h("h2", {}, "4 Train"),
      h("div", { class: "progress" }, el.bar), el.progressText, el.trainButtons, el.trainMsg,
      h("div", { class: "grid2" }, h("div", {}, el.chart), h("div", {}, el.preview, el.previewNote))),
    h("div", { class: "card", id: "qc" }, h("h2", {}, "5 Quality control"),
      h("p", { class: "muted" }, `Apply the model to images it has not been trained on, for which you have the right answer (${t.targets_are_labels ? "masks" : "clean targets"} with the same file names), and compare. The report has metrics per image, error maps, the loss curves and a comparison of the kept checkpoints.`),
      folderPicker("QC images", null, (p) => { qcSel.images = p; }, "pick-qc-images"),
      folderPicker(t.targets_are_labels ? "QC masks" : "QC targets", null, (p) => { qcSel.targets = p; }, "pick-qc-targets"),
      h("div", { class: "row" }, qcBtn), el.qcProgress, el.qcMsg, el.report, el.ckpt),
    h("div", { class: "card", id: "apply" }, h("h2", {}, "6 Apply"),
      h("p", { class: "muted" }, "Choose a folder of images; the results are written into this run's folder (apply/), each with the input's name, beside a provenance.json saying which model made them."),
      folderPicker("Images to process", null, (p) => { applySel.input = p; }, "pick-apply"),
      d.tta_ok ? h("label", {}, h("input", { type: "checkbox", "data-testid": "apply-tta", onchange: (e) => { applySel.tta = e.target.checked; } }),
        " Average over the 8 flips and turns of each image (8 times slower, usually a little cleaner)") : null,
      d.int8_ok ? h("label", {}, h("input", { type: "checkbox", "data-testid": "apply-int8", onchange: (e) => { applySel.int8 = e.target.checked; } }),
        " Faster: 8-bit arithmetic (the network 1.4 to 2 times faster; results can differ slightly, so compare with quality control first)") : null,
      h("div", { class: "row" }, applyBtn), el.applyProgress, el.applyMsg, el.results),
    h("div", { class: "card", id: "share" }, h("h2", {}, "7 Share"), el.share));

  let lastPreview = null, lastReport = null, lastResults = null, lastExports = null, shareShown = null;
  function update(d) {
    el.status.textContent = d.status; el.status.className = "status " + d.status.replace(/ /g, "-");
    el.words.textContent = d.status_words || "";
    const train = d.jobs.find((j) => j.kind === "train");
    const p = (train && train.status === "running" && train.progress) || {};
    const epochs = d.config ? d.config.training.epochs : d.epochs;
    const done = Math.max(d.epochs_done, p.epoch || 0);
    el.bar.style.width = `${Math.min(100, (100 * done) / (epochs || 1))}%`;
    el.progressText.textContent = d.status === "training"
      ? `Epoch ${done} of ${epochs}` + (p.eta_s !== undefined ? ` — about ${fmtTime(p.eta_s)} left (elapsed ${fmtTime(p.elapsed_s)})` : " — starting (reading the images)…")
      : `${d.epochs_done} of ${epochs} epochs trained` + (d.metric ? ` — ${metricText(d.metric)}` : "");
    el.chart.replaceChildren(chart(lossSeries(d.history, "", "#2463a6"), "loss"));
    const btns = [];
    if (d.status === "training") btns.push(h("button", { class: "danger", "data-testid": "stop", onclick: async () => { await api("POST", `/api/runs/${name}/stop`); el.trainMsg.replaceChildren(h("p", { class: "muted" }, "Stopping after the current step; the best model so far is kept.")); } }, "Stop (keep the best model)"));
    if (d.status === "interrupted") {
      const more = h("input", { type: "number", min: 1, value: epochs, style: "width:90px", id: "resume-epochs" });
      btns.push(h("button", { "data-testid": "resume", onclick: async () => {
        try { await api("POST", `/api/runs/${name}/resume`, { epochs: Number(more.value) || null }); poll(); } catch (e) { el.trainMsg.replaceChildren(errorBox(e)); }
      } }, "Resume training"), h("label", { for: "resume-epochs" }, "up to epoch"), more);
    }
    el.trainButtons.replaceChildren(...btns);
    if (train && train.status === "failed") el.trainMsg.replaceChildren(errorBox({ error: train.message }));
    if (d.preview && (lastPreview !== d.epochs_done + d.status)) {
      lastPreview = d.epochs_done + d.status;
      el.preview.src = `/api/runs/${name}/files/preview.png?t=${Date.now()}`; el.preview.style.display = "";
      el.previewNote.textContent = "Preview of the result on one of your images (input left, model result right), updated during training.";
    }
    // QC
    const trained = !!d.model;
    const busy = d.jobs.some((j) => j.status === "running" || j.status === "queued");
    qcBtn.disabled = !trained || busy; applyBtn.disabled = !trained || busy;
    const qc = d.jobs.find((j) => j.kind === "qc");
    el.qcProgress.replaceChildren(jobLine(qc, "Quality control"));
    if (qc && qc.status === "failed") el.qcMsg.replaceChildren(errorBox({ error: qc.message }));
    const reportKey = d.qc_report ? `${qc ? qc.id : 0}-${qc ? qc.status : ""}` : null;
    if (reportKey && reportKey !== lastReport && !(qc && qc.status === "running")) {
      lastReport = reportKey;
      el.report.replaceChildren(h("p", {}, h("a", { href: `/api/runs/${name}/files/qc/report.html`, target: "_blank" }, "Open the report in its own tab")),
        h("iframe", { class: "report", src: `/api/runs/${name}/files/qc/report.html?t=${Date.now()}`, title: "quality control report", "data-testid": "qc-report" }));
    }
    if (trained) {
      const sel = h("select", { id: "checkpoint" }, ["best", ...d.checkpoints.filter((c) => c !== "best")].map((c) => h("option", { value: c }, c === "best" ? "best (lowest validation loss)" : c)));
      sel.value = d.weights_from || "best";
      const msg = h("span", { class: "muted" });
      el.ckpt.replaceChildren(h("h3", {}, "Which checkpoint to keep"),
        h("p", { class: "muted" }, "The model uses the checkpoint with the lowest validation loss. The report above compares the kept checkpoints; if another one scores better, choose it here (then run quality control again to update the scores)."),
        h("div", { class: "row" }, h("label", { for: "checkpoint" }, "Model weights from"), sel,
          h("button", { class: "secondary", disabled: busy, onclick: async () => {
            try { const r = await api("POST", `/api/runs/${name}/checkpoint`, { checkpoint: sel.value }); msg.textContent = `The model now uses ${r.weights_from}.`; } catch (e) { msg.replaceChildren(errorBox(e)); }
          } }, "Use this checkpoint"), msg));
    } else el.ckpt.replaceChildren(h("p", { class: "muted" }, "Available once the training has finished."));
    // Apply
    const pr = d.jobs.find((j) => j.kind === "predict");
    el.applyProgress.replaceChildren(jobLine(pr, "Applying"));
    if (pr && pr.status === "failed") el.applyMsg.replaceChildren(errorBox({ error: pr.message }));
    const resKey = JSON.stringify(d.applied.map((a) => [a.name, a.files.length]));
    if (resKey !== lastResults) {
      lastResults = resKey;
      el.results.replaceChildren(...d.applied.slice(0, 3).map((a) => h("div", {},
        h("h3", {}, `Results in ${a.path}`),
        h("div", { class: "thumbs" }, a.files.slice(0, 12).map((f) => h("div", { class: "thumb" }, h("div", { class: "pair" },
          h("img", { src: thumbUrl(f.input), alt: "input" }),
          h("img", { src: t.targets_are_labels ? thumbUrl(f.input, { labels: f.output }) : thumbUrl(f.output), alt: "result" })),
          `${f.input.split("/").pop()} — input | result`))))));
    }
    // Share
    exportBtn.disabled = !trained || busy;
    if (trained !== shareShown) {
      shareShown = trained;
      el.share.replaceChildren(trained
        ? h("div", {}, h("h3", {}, "For deepscope"),
          h("p", {}, h("a", { class: "button", href: `/api/runs/${name}/model.zip`, "data-testid": "download" }, "Download the model folder (.zip)")),
          h("p", { class: "muted" }, "The model folder holds the weights, the full settings, the normalisation, the training history and a model card. Use it on another computer with "),
          h("pre", {}, `deepscope predict ${name}-model --input IMAGES --out RESULTS`),
          h("h3", {}, "For Fiji (deepImageJ), ilastik, napari and bioimage.io"),
          h("p", { class: "muted" }, "A BioImage.IO package: the weights in three formats (PyTorch, TorchScript, ONNX), the normalisation, a test image made from your first training image with this model's result for it, a cover picture, and the model card with the quality-control scores (run quality control first to include them). It is checked with the community's own test before it is offered. The package names its authors and its licence (an SPDX identifier)."),
          h("div", { class: "row" }, h("label", { for: "export-authors" }, "Authors (separate several with ;)"), exportSel.authors),
          h("div", { class: "row" }, h("label", { for: "export-license" }, "Licence"), exportSel.license,
            h("datalist", { id: "licences" }, ["CC-BY-4.0", "CC0-1.0", "MIT", "BSD-3-Clause", "Apache-2.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0"].map((l) => h("option", { value: l })))),
          h("div", { class: "row" }, h("label", { for: "export-name" }, "Model name"), exportSel.name),
          h("div", { class: "row" }, exportBtn), el.exportProgress, el.exportMsg, el.exports)
        : h("p", { class: "muted" }, "Available once the training has finished."));
    }
    const ex = d.jobs.find((j) => j.kind === "export");
    el.exportProgress.replaceChildren(jobLine(ex, "Export"));
    if (ex && ex.status === "failed") el.exportMsg.replaceChildren(errorBox({ error: ex.message }));
    const exKey = JSON.stringify(d.exports);
    if (exKey !== lastExports) {
      lastExports = exKey;
      el.exports.replaceChildren(...(d.exports.length ? [h("p", {}, "Packages of this model: install one in Fiji with deepImageJ (Install Model), open it in ilastik or napari, or upload it to bioimage.io."),
        h("ul", {}, d.exports.map((x) => h("li", {}, h("a", { href: `/api/runs/${name}/files/${x.file}`, download: x.name, "data-testid": "export-file" }, x.name), ` — ${x.size_mb} MB, ${x.date.replace("T", " ").replace("+00:00", " UTC")}`)))] : []));
    }
    return busy || d.status === "training";
  }
  function jobLine(job, what) {
    if (!job) return h("span");
    const p = job.progress || {};
    if (job.status === "queued") return h("div", {}, h("span", { class: "status running" }, "starting"), ` ${what}: waiting for the worker process to start…`);
    if (job.status === "running") {
      const frac = p.total ? ` ${Math.floor(p.done)} of ${p.total}` : "";
      return h("div", {}, h("span", { class: "status running" }, "running"), ` ${what}: ${p.stage || "starting"}${frac}…`);
    }
    return h("div", {}, h("span", { class: "status " + job.status }, job.status), " ", job.message || "");
  }
  async function poll() {
    stopPolling();
    try {
      const fresh = await api("GET", `/api/runs/${encodeURIComponent(name)}`);
      if (location.hash !== "#/run/" + encodeURIComponent(name)) return;
      const again = update(fresh);
      pollTimer = setTimeout(poll, again ? 1500 : 6000);
    } catch (e) { pollTimer = setTimeout(poll, 5000); }
  }
  update(d);
  pollTimer = setTimeout(poll, 1000);
}

// ---------------------------------------------------------------- runs page

async function viewRuns() {
  const rows = await api("GET", "/api/runs");
  const picked = new Set();
  const compare = h("button", { disabled: true, "data-testid": "compare", onclick: () => { location.hash = "#/compare/" + [...picked].map(encodeURIComponent).join("/"); } }, "Compare the two chosen runs");
  const msg = h("div");
  const body = rows.map((r) => {
    const confirmBox = h("span");
    const del = h("button", { class: "secondary", "data-testid": `delete-${r.name}`, onclick: () => {
      const typed = h("input", { type: "text", placeholder: "type the run's name", "data-testid": `confirm-${r.name}` });
      confirmBox.replaceChildren(h("span", { class: "muted" }, "This deletes the run folder with its model and results. "), typed,
        h("button", { class: "danger", "data-testid": `really-delete-${r.name}`, onclick: async () => {
          try { await api("DELETE", `/api/runs/${encodeURIComponent(r.name)}` + q({ confirm: typed.value })); viewRuns(); } catch (e) { msg.replaceChildren(errorBox(e)); }
        } }, "Delete for good"));
    } }, "Delete…");
    return h("tr", { "data-testid": `run-${r.name}` },
      h("td", {}, h("input", { type: "checkbox", "aria-label": "choose for comparison", onchange: (e) => { e.target.checked ? picked.add(r.name) : picked.delete(r.name); compare.disabled = picked.size !== 2; } })),
      h("td", {}, h("a", { href: "#/run/" + encodeURIComponent(r.name) }, r.name)),
      h("td", {}, r.task || "?"), h("td", {}, h("code", {}, r.images || "?")),
      h("td", {}, r.date ? r.date.replace("T", " ").replace("+00:00", " UTC") : "?"),
      h("td", {}, h("span", { class: "status " + r.status.replace(/ /g, "-") }, r.status), h("div", { class: "muted" }, r.status_words)),
      h("td", {}, `${r.epochs_done}/${r.epochs ?? "?"}`), h("td", {}, metricText(r.metric)), h("td", {}, del, confirmBox));
  });
  main().replaceChildren(h("h1", {}, "Runs"),
    h("p", { class: "muted" }, "Every training in the runs folder, newest first. Open one to follow it, check its quality or apply it; choose two to compare."),
    msg, rows.length ? h("div", { class: "card" }, h("table", {}, h("tr", {}, ["", "run", "task", "data", "date", "status", "epochs", "key metric", ""].map((x) => h("th", {}, x))), body), h("div", { class: "row" }, compare))
      : h("p", {}, "No runs yet. ", h("a", { href: "#/new" }, "Start a training.")));
}

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[prefix + k] = JSON.stringify(v);
  }
  return out;
}

async function viewCompare(a, b) {
  const [A, B] = await Promise.all([a, b].map((n) => api("GET", `/api/runs/${encodeURIComponent(n)}`)));
  const fa = flatten(A.config), fb = flatten(B.config);
  const diff = [...new Set([...Object.keys(fa), ...Object.keys(fb)])].filter((k) => fa[k] !== fb[k]).sort();
  const best = (r) => { const v = r.history.map((x) => x.val_loss).filter((x) => x !== null); return v.length ? Math.min(...v) : null; };
  const rowsM = [["task", A.task, B.task], ["status", A.status, B.status], ["epochs trained", A.epochs_done, B.epochs_done],
    ["best validation loss", fmtNum(best(A)), fmtNum(best(B))], ["key metric", metricText(A.metric), metricText(B.metric)]];
  main().replaceChildren(h("h1", {}, `Compare ${a} and ${b}`),
    h("div", { class: "card" }, chart([...lossSeries(A.history, a + " ", "#2463a6"), ...lossSeries(B.history, b + " ", "#d9822b")], "loss"),
      h("p", { class: "muted" }, "Losses of different tasks or loss functions are not comparable with each other; quality-control metrics are.")),
    h("div", { class: "card" }, h("h2", {}, "Metrics"), h("table", { "data-testid": "compare-table" }, h("tr", {}, h("th", {}, ""), h("th", {}, a), h("th", {}, b)),
      rowsM.map((r) => h("tr", {}, r.map((c) => h("td", {}, String(c ?? "–"))))))),
    h("div", { class: "card" }, h("h2", {}, "Settings that differ"), diff.length
      ? h("table", {}, h("tr", {}, h("th", {}, "setting"), h("th", {}, a), h("th", {}, b)), diff.map((k) => h("tr", {}, h("td", {}, k), h("td", {}, fa[k] ?? "–"), h("td", {}, fb[k] ?? "–"))))
      : h("p", {}, "The two runs used the same settings.")));
}

// ---------------------------------------------------------------- router

async function route() {
  stopPolling();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  document.getElementById("nav-runs").className = parts[0] === "runs" || parts[0] === "run" || parts[0] === "compare" ? "active" : "";
  document.getElementById("nav-new").className = parts[0] === "new" || !parts[0] ? "active" : "";
  try {
    if (parts[0] === "runs") await viewRuns();
    else if (parts[0] === "run" && parts[1]) await viewRun(parts[1]);
    else if (parts[0] === "compare" && parts[2]) await viewCompare(parts[1], parts[2]);
    else if (parts[0] === "new" && parts[1] === "data") await viewData();
    else if (parts[0] === "new" && parts[1] === "settings") await viewSettings();
    else await viewTasks();
  } catch (e) { main().replaceChildren(errorBox(e)); }
}

window.addEventListener("hashchange", route);
api("GET", "/api/info").then((i) => { document.getElementById("server-info").textContent = `deepscope ${i.version} — runs in ${i.runs}`; }).catch(() => {});
route();
