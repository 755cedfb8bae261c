"use strict";
// The synthserve page (docs/api.md, "Files in and out, CLI, web page, CORS"): the same
// HTTP API as any client, no framework, no build step. Server-sent events are read with
// fetch, not EventSource, because EventSource cannot send the Authorization header.

const $ = (selector) => document.querySelector(selector);
const MAX_EVENTS = 300; // lines kept in the job's event log
const JOBS_POLL_MS = 2000;

const state = {
  kind: null, name: null, detail: null, // the task or pipeline picked
  run: null, // AbortController of "Run now"
  jobId: null, follow: null, // the job shown, and the AbortController of its event stream
  lastEvent: {}, // job id -> the last event id seen: a retried job's stream goes on from there
};

// ---- HTTP ----

function headers(extra = {}) {
  const key = $("#api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(detail);
}

async function failure(response) {
  const text = await response.text();
  try { return new Error(`${response.status}: ${detailText(JSON.parse(text).detail)}`); }
  catch { return new Error(`${response.status}: ${text}`); }
}

async function api(method, path, body, signal) {
  const form = body instanceof FormData; // multipart: the browser sets the Content-Type and its boundary
  const init = { method, headers: headers(body && !form ? { "Content-Type": "application/json" } : {}), signal };
  if (body) init.body = form ? body : JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

const getJSON = async (path) => (await api("GET", path)).json();

async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "id") id = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) yield { event, id, data: JSON.parse(data.join("\n")) };
    }
  }
}

function say(text, error = false) {
  const message = $("#message");
  message.textContent = text;
  message.className = error ? "error" : "";
}

function el(tag, { dataset = {}, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ---- the catalogue ----

function fillList(selector, names, pick) {
  $(selector).replaceChildren(...names.map((name) =>
    el("li", {}, el("button", { type: "button", textContent: name, onclick: () => pick(name) }))));
}

async function loadCatalogue() {
  const { tasks } = await getJSON("/tasks");
  fillList("#tasks", tasks.map((t) => t.name), (name) => pick("task", name));
  try {
    const { pipelines } = await getJSON("/pipelines");
    $("#pipelines-box").hidden = pipelines.length === 0;
    fillList("#pipelines", pipelines.map((p) => p.name), (name) => pick("pipeline", name));
  } catch { /* a server without pipelines */ }
}

async function pick(kind, name) {
  const detail = await getJSON(`/${kind}s/${encodeURIComponent(name)}`);
  Object.assign(state, { kind, name, detail });
  for (const button of document.querySelectorAll("#catalogue li button"))
    button.setAttribute("aria-current", String(button.textContent === name));
  $("#pick").hidden = true;
  $("#editor").hidden = false;
  $("#title").textContent = `${kind} ${name}`;
  $("#description").textContent = detail.description || "";
  buildParams(kind === "task" ? detail.params_schema : null);
  buildRows(inputColumns());
  $("#output-box").hidden = true;
  say("");
}

function inputColumns() {
  const d = state.detail;
  if (state.kind === "task") return d.generator ? [] : d.inputs;
  return d.inputs || d.input_columns || [];
}

// ---- the params form, from params_schema ----

function resolve(schema, root) {
  if (schema.$ref) schema = root.$defs[schema.$ref.split("/").pop()];
  if (schema.anyOf) {
    const kinds = schema.anyOf.filter((s) => s.type !== "null");
    if (kinds.length === 1) return { ...resolve(kinds[0], root), nullable: true };
    return { ...schema, type: "json" };
  }
  if (schema.allOf && schema.allOf.length === 1) return resolve(schema.allOf[0], root);
  return schema;
}

function buildParams(schema) {
  const box = $("#params");
  box.replaceChildren(el("legend", { textContent: "params" }));
  box.hidden = !schema;
  if (!schema) return;
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const s = resolve(raw, schema);
    const def = raw.default !== undefined ? raw.default : s.default;
    let input;
    if (s.enum) {
      input = el("select", { name }, el("option", { value: "", textContent: "(default)" }),
        ...s.enum.map((v) => el("option", { value: JSON.stringify(v), textContent: String(v), selected: v === def })));
      input.dataset.kind = "json";
    } else if (s.type === "boolean") {
      input = el("input", { name, type: "checkbox", checked: def === true });
      input.dataset.kind = "boolean";
    } else if (s.type === "integer" || s.type === "number") {
      input = el("input", { name, type: "number", step: s.type === "integer" ? "1" : "any",
                            value: def ?? "", placeholder: def === undefined ? "(none)" : "" });
      input.dataset.kind = "number";
    } else if (s.type === "string") {
      input = el("input", { name, value: def ?? "", placeholder: def === undefined || def === null ? "(none)" : "" });
      input.dataset.kind = "string";
    } else {
      input = el("textarea", { name, rows: 2, value: def === undefined || def === null ? "" : JSON.stringify(def),
                               placeholder: "JSON" });
      input.dataset.kind = "json";
    }
    input.dataset.initial = input.type === "checkbox" ? String(input.checked) : input.value;
    if (required.has(name)) input.dataset.required = "1";
    const label = el("label", {}, `${name}${required.has(name) ? " *" : ""}`, input);
    if (raw.description) label.append(el("span", { className: "help", textContent: raw.description }));
    box.append(label);
  }
}

function readParams() {
  const params = {};
  for (const input of document.querySelectorAll("#params [name]")) {
    const changed = input.type === "checkbox" ? String(input.checked) !== input.dataset.initial
                                              : input.value !== input.dataset.initial;
    if (!changed && !input.dataset.required) continue; // defaults stay the server's
    if (input.type === "checkbox") params[input.name] = input.checked;
    else if (input.value === "") continue;
    else if (input.dataset.kind === "number") params[input.name] = Number(input.value);
    else if (input.dataset.kind === "json") params[input.name] = parseJSON(input.value, `params.${input.name}`);
    else params[input.name] = input.value;
  }
  return params;
}

function parseJSON(text, where) {
  try { return JSON.parse(text); } catch { throw new Error(`${where}: not JSON`); }
}

function readLLM() {
  const form = $("#params-form");
  const llm = {};
  const kwargs = {};
  if (form.backend.value.trim()) llm.backend = form.backend.value.trim();
  if (form.max_new_tokens.value) kwargs.max_new_tokens = Number(form.max_new_tokens.value);
  if (form.temperature.value) kwargs.temperature = Number(form.temperature.value);
  if (Object.keys(kwargs).length) llm.generation_kwargs = kwargs;
  return llm;
}

// ---- rows ----

function buildRows(columns) {
  $("#rows-box").hidden = columns.length === 0;
  $("#rows thead").replaceChildren(el("tr", {}, ...columns.map((c) => el("th", { textContent: c })), el("th")));
  $("#rows tbody").replaceChildren();
  if (columns.length) addRow();
}

function addRow() {
  const columns = inputColumns();
  const remove = el("button", { type: "button", textContent: "✕", title: "remove this row" });
  const tr = el("tr", {}, ...columns.map((c) => el("td", {}, el("textarea", { name: c, rows: 1 }))), el("td", {}, remove));
  remove.onclick = () => tr.remove();
  $("#rows tbody").append(tr);
  return tr;
}

function readRows() {
  return [...document.querySelectorAll("#rows tbody tr")].map((tr, i) => {
    const row = {};
    for (const cell of tr.querySelectorAll("textarea")) {
      const text = cell.value;
      // a JSON list or object (chat messages, score lists) goes as such; anything else is text
      row[cell.name] = /^\s*[[{]/.test(text) ? parseJSON(text, `rows[${i}].${cell.name}`) : text;
    }
    return row;
  });
}

function request() {
  const body = { rows: readRows(), llm: readLLM() };
  if (state.kind === "task") body.params = readParams();
  return body;
}

// ---- "Run now": rows (and tokens) as they stream ----

function outputColumns() {
  const d = state.detail;
  return [...inputColumns(), ...(d.outputs || d.output_columns || []), "model_name", "error"];
}

function cellText(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 1);
}

function outputRow(key) {
  let tr = document.querySelector(`#output tr[data-key="${CSS.escape(String(key))}"]`);
  if (!tr) {
    tr = el("tr", {}, el("td", { textContent: key }), ...outputColumns().map((c) => el("td", { dataset: { column: c } }, el("pre"))));
    tr.dataset.key = key;
    $("#output tbody").append(tr);
  }
  return tr;
}

function showRow(key, row) {
  const tr = outputRow(key);
  for (const td of tr.querySelectorAll("td[data-column]")) {
    td.firstChild.textContent = cellText(row[td.dataset.column]);
    td.classList.toggle("error", td.dataset.column === "error" && !!row.error);
  }
  $("#output-count").textContent = `(${$("#output tbody").children.length} rows)`;
}

async function runNow() {
  if (state.run) state.run.abort();
  const controller = state.run = new AbortController();
  const generation = state.kind === "task" && ["text-generation", "chat-generation"].includes(state.name);
  const body = { ...request(), stream: true };
  if (generation) body.stream_tokens = true;
  $("#output thead").replaceChildren(el("tr", {}, el("th", { textContent: "#" }), ...outputColumns().map((c) => el("th", { textContent: c }))));
  $("#output tbody").replaceChildren();
  $("#output-count").textContent = "";
  $("#output-box").hidden = false;
  say("running…");
  const response = await api("POST", `/${state.kind}s/${encodeURIComponent(state.name)}`, body, controller.signal);
  for await (const { event, data } of events(response)) {
    if (event === "token") {
      const td = outputRow(data.index).querySelector('td[data-column="generation"] pre');
      if (td) td.textContent += data.text;
    } else if (event === "row") {
      showRow(data.index ?? data.id, data.row);
    } else if (event === "done") {
      say(`done: ${data.rows} rows, ${data.failed} failed` + (data.seed !== undefined ? `, seed ${data.seed}` : ""));
    } else if (event === "error") {
      say(detailText(data.detail), true);
    }
  }
}

async function submitJob() {
  const body = { ...request(), [state.kind]: state.name };
  submitted(await (await api("POST", "/jobs", body)).json());
}

async function submitFile() {
  const file = $("#rows-file").files[0];
  if (!file) throw new Error("choose a .jsonl, .json, .csv or .parquet file first");
  const { rows, ...job } = { ...request(), [state.kind]: state.name };
  const form = new FormData();
  form.append("job", JSON.stringify(job));
  form.append("file", file, file.name);
  submitted(await (await api("POST", "/jobs", form)).json());
}

async function submitted(job) {
  say(`job ${job.id} submitted`);
  await loadJobs();
  showJob(job.id);
}

// ---- jobs ----

function progressOf(job) {
  const p = job.progress;
  const done = p.completed + p.failed;
  const pct = p.total ? Math.floor((100 * done) / p.total) : (job.status === "completed" ? 100 : 0);
  return { done, total: p.total, pct };
}

function jobRow(job) {
  const { done, total, pct } = progressOf(job);
  const bar = el("progress", { max: total || 1, value: done });
  const tr = el("tr", { className: job.id === state.jobId ? "selected" : "" },
    el("td", { textContent: job.id, title: job.task || job.pipeline || "" }),
    el("td", { className: "status", textContent: job.status }),
    el("td", { className: "progress" }, bar, ` ${pct}% `, el("small", { textContent: `${done}/${total}` + (job.progress.failed ? `, ${job.progress.failed} failed` : "") })),
    el("td", {}, el("button", { type: "button", textContent: "open", onclick: () => showJob(job.id) })));
  tr.dataset.job = job.id;
  return tr;
}

function updateJob(job) {
  const old = document.querySelector(`#jobs tr[data-job="${job.id}"]`);
  const tr = jobRow(job);
  if (old) old.replaceWith(tr); else $("#jobs tbody").prepend(tr);
  if (job.id === state.jobId) $("#job-title").textContent = `${job.id}: ${job.status}` + (job.error ? ` (${job.error})` : "");
}

async function loadJobs() {
  const { jobs } = await getJSON("/jobs");
  $("#jobs tbody").replaceChildren(...jobs.map(jobRow));
}

function logEvent(text) {
  const list = $("#events");
  list.append(el("li", { textContent: text }));
  while (list.children.length > MAX_EVENTS) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

async function showJob(id, { goOn = false } = {}) {
  if (state.follow) state.follow.abort();
  const controller = state.follow = new AbortController();
  state.jobId = id;
  $("#job-detail").hidden = false;
  if (!goOn) {
    $("#events").replaceChildren();
    delete state.lastEvent[id];
  }
  for (const tr of document.querySelectorAll("#jobs tr[data-job]")) tr.classList.toggle("selected", tr.dataset.job === id);
  updateJob(await getJSON(`/jobs/${id}`));
  try {
    const after = state.lastEvent[id] ? { "Last-Event-ID": state.lastEvent[id] } : {};
    const response = await fetch(`/jobs/${id}/events`, { headers: headers(after), signal: controller.signal });
    if (!response.ok) throw await failure(response);
    for await (const { event, id: eventId, data } of events(response)) {
      if (eventId) state.lastEvent[id] = eventId;
      if (event === "row") logEvent(`row ${data.index ?? data.id}${data.row.error ? ` failed: ${data.row.error.message}` : ""}`);
      else {
        const { done, total } = progressOf(data);
        logEvent(`${event}: ${data.status} ${done}/${total}`);
        updateJob(data);
      }
    }
  } catch (exc) {
    if (exc.name !== "AbortError") logEvent(`stream ended: ${exc.message}`);
  }
}

async function jobAction(action) {
  const job = await (await api("POST", `/jobs/${state.jobId}/${action}`)).json();
  updateJob(job);
  if (action === "retry") showJob(job.id, { goOn: true }); // its new events follow the old ones
}

async function download() {
  const format = $("#download-format").value;
  const response = await api("GET", `/jobs/${state.jobId}/results?format=${format}`);
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: `${state.jobId}.${format}` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- wiring ----

function guard(action) {
  return () => action().catch((exc) => { if (exc.name !== "AbortError") say(exc.message, true); });
}

$("#api-key").value = localStorage.getItem("synthserve-api-key") || "";
$("#api-key").onchange = guard(async () => {
  localStorage.setItem("synthserve-api-key", $("#api-key").value.trim());
  await loadCatalogue();
  await loadJobs();
});
$("#add-row").onclick = addRow;
$("#run").onclick = guard(runNow);
$("#submit-job").onclick = guard(submitJob);
$("#submit-file").onclick = guard(submitFile);
$("#refresh-jobs").onclick = guard(loadJobs);
$("#cancel-job").onclick = guard(() => jobAction("cancel"));
$("#retry-job").onclick = guard(() => jobAction("retry"));
$("#download-job").onclick = guard(download);
guard(loadCatalogue)();
guard(loadJobs)();
setInterval(() => {
  if (document.querySelector("#jobs td.status") && [...document.querySelectorAll("#jobs td.status")]
      .some((td) => td.textContent === "queued" || td.textContent === "running")) loadJobs().catch(() => {});
}, JOBS_POLL_MS);
