// The web UI: a single page over the REST API (no build step, no dependencies). Each view is
// a function of the location hash: #/studies?PatientName=..., #/patient/ID, #/study/UID,
// #/instance/UID, #/upload, #/remote, #/statistics.
"use strict";

const view = document.getElementById("view");

// --- helpers -------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// A URL whose interpolated values are each one path segment, encoded: a UID cannot climb out
// of its place ("../studies/X" stays one segment).
function url(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ""), "");
}

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(`${name}=`));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

function toLogin() {
  location.assign(`/auth/login?next=${encodeURIComponent(location.pathname + location.hash)}`);
}

// Every request says it comes from the UI (no Basic prompt on a 401) and, when it changes
// something, carries the session's CSRF token.
async function api(path, options = {}) {
  const headers = { "X-Requested-With": "dicomvault", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = cookie("dicomvault_csrf");
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    toLogin();
    throw Object.assign(new Error("Your session has ended: log in again."), { status: 401 });
  }
  const text = await response.text();
  let body = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw Object.assign(new Error(message), { status: response.status, body });
  }
  return body;
}

function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = kind;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 4000);
}

function personName(value) {
  if (!value) return "";
  const [family, given, middle, prefix, suffix] = value.split("=")[0].split("^");
  const rest = [prefix, given, middle, suffix].filter(Boolean).join(" ");
  return rest ? `${family}, ${rest}` : family;
}

function dicomDate(value) {
  return /^\d{8}$/.test(value || "") ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}` : value || "";
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) search.set(name, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

function table(columns, rows, onOpen) {
  if (!rows.length) return h("p", { class: "empty" }, "Nothing found.");
  return h(
    "table",
    { class: onOpen ? "list clickable" : "list" },
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", {}, title)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          { tabindex: onOpen ? 0 : null, onclick: onOpen && (() => onOpen(row)), onkeydown: onOpen && ((e) => e.key === "Enter" && onOpen(row)) },
          columns.map(([, cell]) => h("td", {}, cell(row))),
        ),
      ),
    ),
  );
}

function field(label, name, value = "", attrs = {}) {
  return h("label", {}, h("span", {}, label), h("input", { name, value, ...attrs }));
}

function formValues(form) {
  return Object.fromEntries([...new FormData(form)].map(([k, v]) => [k, String(v).trim()]));
}

// A date range from two <input type=date> as DICOM matching wants it: 20200101-20201231.
function dateRange(from, to) {
  const compact = (d) => (d || "").replaceAll("-", "");
  return from || to ? `${compact(from)}-${compact(to)}` : "";
}

function splitDateRange(value) {
  const [from = "", to = ""] = (value || "").split("-");
  const iso = (d) => (/^\d{8}$/.test(d) ? dicomDate(d) : "");
  return [iso(from), iso(to)];
}

let modalitiesCache = null;
async function modalities() {
  modalitiesCache = modalitiesCache || (await api("/modalities"));
  return modalitiesCache;
}

function modalitySelect(list, attrs = {}) {
  return h("select", attrs, list.map((m) => h("option", { value: m.name }, `${m.name} (${m.aet}@${m.host}:${m.port})`)));
}

// --- studies and patients --------------------------------------------------------------------

const STUDY_COLUMNS = [
  ["Patient", (s) => personName(s.patient.PatientName)],
  ["Patient ID", (s) => s.patient.PatientID || ""],
  ["Date", (s) => dicomDate(s.tags.StudyDate)],
  ["Description", (s) => s.tags.StudyDescription || ""],
  ["Accession", (s) => s.tags.AccessionNumber || ""],
  ["Modalities", (s) => (s.tags.ModalitiesInStudy || "").replaceAll("\\", ", ")],
  ["Series", (s) => s.counts.series || 0],
  ["Instances", (s) => s.counts.instances || 0],
];

async function studiesView(params) {
  const [from, to] = splitDateRange(params.StudyDate);
  const form = h(
    "form",
    { class: "filters", onsubmit: (e) => {
      e.preventDefault();
      const v = formValues(e.target);
      const filters = { ...v, StudyDate: dateRange(v.from, v.to) };
      delete filters.from;
      delete filters.to;
      location.hash = `#/studies${query(filters)}`;
    } },
    field("Patient name", "PatientName", params.PatientName, { placeholder: "SMITH*", autofocus: true }),
    field("Patient ID", "PatientID", params.PatientID),
    field("Accession", "AccessionNumber", params.AccessionNumber),
    field("Modality", "ModalitiesInStudy", params.ModalitiesInStudy, { placeholder: "CT", size: 6 }),
    field("Study date from", "from", from, { type: "date" }),
    field("to", "to", to, { type: "date" }),
    h("button", { type: "submit", class: "primary" }, "Search"),
  );
  const results = h("section", { class: "results" }, h("p", { class: "empty" }, "Searching…"));
  view.replaceChildren(h("h2", {}, "Studies"), form, results);
  const filters = { ...params, limit: 500 };
  if (filters.PatientName && !/[*?]/.test(filters.PatientName)) filters.PatientName += "*";
  const studies = await api(`/studies${query(filters)}`);
  results.replaceChildren(
    h("p", { class: "count" }, `${studies.length} ${studies.length === 1 ? "study" : "studies"}`),
    table(STUDY_COLUMNS, studies, (s) => (location.hash = url`#/study/${s.key}`)),
  );
}

async function patientsView(params) {
  const form = h(
    "form",
    { class: "filters", onsubmit: (e) => {
      e.preventDefault();
      location.hash = `#/patients${query(formValues(e.target))}`;
    } },
    field("Patient name", "PatientName", params.PatientName, { placeholder: "SMITH*", autofocus: true }),
    field("Patient ID", "PatientID", params.PatientID),
    h("button", { type: "submit", class: "primary" }, "Search"),
  );
  const results = h("section", { class: "results" });
  view.replaceChildren(h("h2", {}, "Patients"), form, results);
  const filters = { ...params, limit: 500 };
  if (filters.PatientName && !/[*?]/.test(filters.PatientName)) filters.PatientName += "*";
  const patients = await api(`/patients${query(filters)}`);
  results.replaceChildren(
    h("p", { class: "count" }, `${patients.length} ${patients.length === 1 ? "patient" : "patients"}`),
    table(
      [
        ["Name", (p) => personName(p.tags.PatientName)],
        ["Patient ID", (p) => p.tags.PatientID || ""],
        ["Issuer", (p) => p.tags.IssuerOfPatientID || ""],
        ["Birth date", (p) => dicomDate(p.tags.PatientBirthDate)],
        ["Sex", (p) => p.tags.PatientSex || ""],
        ["Studies", (p) => p.counts.studies || 0],
        ["Instances", (p) => p.counts.instances || 0],
        ["Size", (p) => bytes(p.size)],
      ],
      patients,
      (p) => (location.hash = patientHash(p)),
    ),
  );
}

function patientHash(patient) {
  const id = encodeURIComponent(patient.tags.PatientID || "");
  return `#/patient/${id}?IssuerOfPatientID=${encodeURIComponent(patient.tags.IssuerOfPatientID || "")}`;
}

async function patientView(id, params) {
  const issuer = `?IssuerOfPatientID=${encodeURIComponent(params.IssuerOfPatientID || "")}`;
  const base = `/patients/${encodeURIComponent(id)}`;
  const [patient, studies] = await Promise.all([api(base + issuer), api(`${base}/studies${issuer}`)]);
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/patients" }, "Patients"), " › ", personName(patient.tags.PatientName)),
    h(
      "div",
      { class: "heading" },
      h("h2", {}, personName(patient.tags.PatientName) || "(no name)"),
      h(
        "div",
        { class: "actions" },
        h("a", { class: "button", href: `${base}/archive${issuer}`, download: "" }, "Download ZIP"),
        await sendControl(patient.tags.PatientID),
        h("button", { class: "danger", onclick: () => remove(`${base}${issuer}`, "this patient", "#/patients") }, "Delete patient"),
      ),
    ),
    facts([
      ["Patient ID", patient.tags.PatientID],
      ["Issuer", patient.tags.IssuerOfPatientID],
      ["Birth date", dicomDate(patient.tags.PatientBirthDate)],
      ["Sex", patient.tags.PatientSex],
      ["Studies", patient.counts.studies],
      ["Instances", patient.counts.instances],
      ["Size", bytes(patient.size)],
    ]),
    table(STUDY_COLUMNS.slice(2), studies, (s) => (location.hash = url`#/study/${s.key}`)),
  );
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== "").map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
}

async function remove(path, what, then) {
  if (!confirm(`Delete ${what}? It cannot be undone.`)) return;
  try {
    const result = await api(path, { method: "DELETE" });
    toast(`Deleted ${result.deleted} instance${result.deleted === 1 ? "" : "s"} (${bytes(result.size)}).`);
    if (location.hash === then) route();
    else location.hash = then;
  } catch (error) {
    toast(error.message, "error");
  }
}

async function sendControl(resource) {
  const list = await modalities();
  if (!list.length) return null;
  const select = modalitySelect(list, { "aria-label": "Modality" });
  const button = h("button", { onclick: async () => {
    button.disabled = true;
    try {
      const result = await api(`/modalities/${encodeURIComponent(select.value)}/store`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ Resources: [resource] }),
      });
      const failed = result.failed.length ? `, ${result.failed.length} failed` : "";
      toast(`Sent ${result.sent} of ${result.instances} instances to ${select.value}${failed}.`, result.failed.length ? "error" : "info");
    } catch (error) {
      toast(error.message, "error");
    } finally {
      button.disabled = false;
    }
  } }, "Send");
  return h("span", { class: "send" }, select, button);
}

// --- a study: series, instances, viewer --------------------------------------------------------

async function studyView(uid, selected = {}) {
  const study = await api(url`/studies/${uid}`);
  const series = await api(url`/studies/${uid}/series`);
  const patient = study.patient;
  const seriesList = h("ul", { class: "picker", "aria-label": "Series" });
  const instanceList = h("ul", { class: "picker", "aria-label": "Instances" });
  const viewer = h("section", { class: "viewer" }, h("p", { class: "empty" }, "Choose an instance."));

  async function openSeries(s, instanceUid) {
    for (const item of seriesList.children) item.classList.toggle("active", item.dataset.key === s.key);
    const instances = await api(url`/series/${s.key}/instances`);
    instances.sort((a, b) => Number(a.tags.InstanceNumber || 0) - Number(b.tags.InstanceNumber || 0));
    instanceList.replaceChildren(
      ...instances.map((i) =>
        h(
          "li",
          { "data-key": i.key, tabindex: 0, onclick: () => openInstance(i), onkeydown: (e) => e.key === "Enter" && openInstance(i) },
          h("strong", {}, `#${i.tags.InstanceNumber || "?"}`),
          h("span", {}, Number(i.tags.NumberOfFrames || 1) > 1 ? `${i.tags.NumberOfFrames} frames` : `${i.tags.Columns || "?"}×${i.tags.Rows || "?"}`),
          h("small", {}, bytes(i.size)),
        ),
      ),
    );
    const first = instances.find((i) => i.key === instanceUid) || instances[0];
    if (first) openInstance(first);
  }

  function openInstance(instance) {
    for (const item of instanceList.children) item.classList.toggle("active", item.dataset.key === instance.key);
    instanceViewer(viewer, instance, () => studyView(uid));
  }

  seriesList.replaceChildren(
    ...series.map((s) =>
      h(
        "li",
        { "data-key": s.key, tabindex: 0, onclick: () => openSeries(s), onkeydown: (e) => e.key === "Enter" && openSeries(s) },
        h("strong", {}, `${s.tags.Modality || "?"} ${s.tags.SeriesNumber || ""}`),
        h("span", {}, s.tags.SeriesDescription || "(no description)"),
        h("small", {}, `${s.counts.instances} instance${s.counts.instances === 1 ? "" : "s"}`),
      ),
    ),
  );
  const title = study.tags.StudyDescription || "(no description)";
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/studies" }, "Studies"), " › ", h("a", { href: patientHash({ tags: patient }) }, personName(patient.PatientName) || "(no name)"), " › ", title),
    h(
      "div",
      { class: "heading" },
      h("h2", {}, title),
      h(
        "div",
        { class: "actions" },
        h("a", { class: "button", href: url`/studies/${uid}/archive`, download: "" }, "Download ZIP"),
        await sendControl(uid),
        h("button", { class: "danger", onclick: () => remove(url`/studies/${uid}`, "this study", "#/studies") }, "Delete study"),
      ),
    ),
    facts([
      ["Patient", personName(patient.PatientName)],
      ["Patient ID", patient.PatientID],
      ["Date", dicomDate(study.tags.StudyDate)],
      ["Accession", study.tags.AccessionNumber],
      ["Modalities", (study.tags.ModalitiesInStudy || "").replaceAll("\\", ", ")],
      ["Instances", study.counts.instances],
      ["Size", bytes(study.size)],
      ["Study UID", study.key],
    ]),
    h(
      "div",
      { class: "browser" },
      h("section", {}, h("h3", {}, "Series"), seriesList),
      h("section", {}, h("h3", {}, "Instances"), instanceList),
      viewer,
    ),
  );
  const initial = series.find((s) => s.key === selected.series) || series[0];
  if (initial) await openSeries(initial, selected.instance);
}

function instanceViewer(viewer, instance, afterDelete) {
  const frames = Math.max(1, Number(instance.tags.NumberOfFrames || 1));
  let frame = 1;
  const image = h("img", { class: "preview", alt: `Instance ${instance.tags.InstanceNumber || ""}` });
  const status = h("span", { class: "frame" });
  const slider = h("input", { type: "range", min: 1, max: frames, value: 1, "aria-label": "Frame", hidden: frames === 1 });
  const message = h("p", { class: "empty", hidden: true });
  function show(n) {
    frame = Math.min(frames, Math.max(1, n));
    slider.value = frame;
    status.textContent = frames > 1 ? `Frame ${frame} / ${frames}` : "";
    image.src = url`/instances/${instance.key}/preview?frame=${frame}`;
  }
  image.addEventListener("error", async () => {
    // The status and message say why (not an image, a codec missing...).
    const response = await fetch(image.src);
    const body = await response.json().catch(() => ({}));
    message.textContent = `No preview: ${body.error || response.statusText}`;
    message.hidden = false;
    image.hidden = true;
  });
  image.addEventListener("load", () => {
    message.hidden = true;
    image.hidden = false;
  });
  slider.addEventListener("input", () => show(Number(slider.value)));
  image.addEventListener("wheel", (e) => {
    if (frames === 1) return;
    e.preventDefault();
    show(frame + Math.sign(e.deltaY));
  }, { passive: false });
  const frameBox = h("div", { class: "stage", tabindex: 0, onkeydown: (e) => {
    if (e.key === "ArrowRight" || e.key === "ArrowDown") show(frame + 1);
    if (e.key === "ArrowLeft" || e.key === "ArrowUp") show(frame - 1);
  } }, image, message);
  const tags = h("div", { class: "tags" }, h("p", { class: "empty" }, "Loading tags…"));
  viewer.replaceChildren(
    frameBox,
    h("div", { class: "controls" }, slider, status),
    h(
      "div",
      { class: "actions" },
      h("a", { class: "button", href: url`/instances/${instance.key}/file`, download: "" }, "Download file"),
      h("button", { class: "danger", onclick: async () => {
        if (!confirm("Delete this instance? It cannot be undone.")) return;
        try {
          await api(url`/instances/${instance.key}`, { method: "DELETE" });
          toast("Deleted 1 instance.");
          afterDelete().catch(() => (location.hash = "#/studies"));
        } catch (error) {
          toast(error.message, "error");
        }
      } }, "Delete instance"),
    ),
    h("details", { class: "tagbox", open: true }, h("summary", {}, "Tags"), tags),
  );
  show(1);
  loadTags(tags, instance.key).catch((error) => tags.replaceChildren(h("p", { class: "error" }, error.message)));
}

async function loadTags(box, uid) {
  const elements = await api(url`/instances/${uid}/tags`);
  const filter = h("input", { type: "search", placeholder: "Filter tags", "aria-label": "Filter tags" });
  const rows = [];
  (function walk(list, depth) {
    for (const e of list) {
      rows.push({ ...e, depth });
      if (e.items) e.items.forEach((item, n) => {
        rows.push({ tag: "", keyword: `Item ${n + 1}`, vr: "", value: "", depth: depth + 1 });
        walk(item, depth + 2);
      });
    }
  })(elements, 0);
  const body = h("tbody");
  function render() {
    const needle = filter.value.trim().toLowerCase();
    body.replaceChildren(
      ...rows
        .filter((r) => !needle || `${r.tag} ${r.keyword} ${r.value}`.toLowerCase().includes(needle))
        .map((r) => h("tr", {}, h("td", { class: "mono" }, r.tag), h("td", { style: `padding-left:${0.5 + r.depth * 0.75}rem` }, r.keyword), h("td", {}, r.vr), h("td", {}, r.value ?? (r.items ? `${r.items.length} item(s)` : "")))),
    );
  }
  filter.addEventListener("input", render);
  render();
  box.replaceChildren(filter, h("table", { class: "list tagtable" }, h("thead", {}, h("tr", {}, h("th", {}, "Tag"), h("th", {}, "Keyword"), h("th", {}, "VR"), h("th", {}, "Value"))), body));
}

// #/instance/UID: the instance within its study.
async function instanceView(uid) {
  const instance = await api(url`/instances/${uid}`);
  const series = await api(url`/series/${instance.parent}`);
  await studyView(series.parent, { series: series.key, instance: uid });
}

// --- upload ------------------------------------------------------------------------------------

function uploadView() {
  const results = h("tbody");
  const input = h("input", { type: "file", multiple: true, id: "files", name: "files" });
  const zone = h("label", { class: "dropzone", for: "files" }, h("strong", {}, "Drop DICOM files here"), h("span", {}, "or click to choose them"), input);
  async function upload(files) {
    for (const file of files) {
      const row = h("tr", {}, h("td", {}, file.name), h("td", {}, "uploading…"), h("td", {}), h("td", {}, bytes(file.size)));
      results.prepend(row);
      let outcome;
      try {
        const answer = await api("/instances", { method: "POST", headers: { "Content-Type": "application/dicom" }, body: file });
        outcome = answer.results[0];
      } catch (error) {
        outcome = (error.body && error.body.results && error.body.results[0]) || { status: "failed", reason: error.message };
      }
      row.children[1].replaceChildren(h("span", { class: `badge ${outcome.status}` }, outcome.status));
      row.children[2].replaceChildren(
        outcome.SOPInstanceUID ? h("a", { href: url`#/instance/${outcome.SOPInstanceUID}` }, "open") : outcome.reason || "",
      );
    }
  }
  input.addEventListener("change", () => upload([...input.files]));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    upload([...e.dataTransfer.files]);
  });
  view.replaceChildren(
    h("h2", {}, "Upload"),
    zone,
    h("table", { class: "list uploads" }, h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", {}, "Status"), h("th", {}, ""), h("th", {}, "Size"))), results),
  );
}

// --- query / retrieve a remote modality -----------------------------------------------------------

const ANSWER_TAGS = {
  PatientName: "00100010",
  PatientID: "00100020",
  StudyDate: "00080020",
  StudyDescription: "00081030",
  AccessionNumber: "00080050",
  ModalitiesInStudy: "00080061",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  Modality: "00080060",
  SeriesNumber: "00200011",
  SeriesDescription: "0008103E",
};

function answerValue(answer, keyword) {
  const element = answer[ANSWER_TAGS[keyword]];
  const value = element && element.Value ? element.Value : [];
  return value.map((v) => (typeof v === "object" ? v.Alphabetic || "" : v)).join("\\");
}

async function remoteView() {
  const list = await modalities();
  if (!list.length) {
    view.replaceChildren(h("h2", {}, "Query / Retrieve"), h("p", { class: "empty" }, "No [modalities] are configured."));
    return;
  }
  const results = h("section", { class: "results" });
  const select = modalitySelect(list, { name: "modality" });
  const form = h(
    "form",
    { class: "filters", onsubmit: async (e) => {
      e.preventDefault();
      const v = formValues(form);
      const studyLevel = v.Level === "STUDY";
      const keys = studyLevel
        ? ["PatientName", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber", "ModalitiesInStudy", "StudyInstanceUID"]
        : ["PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"];
      const filters = { PatientName: v.PatientName, PatientID: v.PatientID, AccessionNumber: v.AccessionNumber, StudyDate: dateRange(v.from, v.to) };
      const q = Object.fromEntries(keys.map((k) => [k, ""]));
      for (const [k, value] of Object.entries(filters)) if (value) q[k] = value;
      results.replaceChildren(h("p", { class: "empty" }, "Querying…"));
      try {
        const answers = await api(`/modalities/${encodeURIComponent(v.modality)}/query`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ Level: v.Level, Query: q }),
        });
        const columns = keys.filter((k) => !k.endsWith("InstanceUID")).map((k) => [k.replace(/([a-z])([A-Z])/g, "$1 $2"), (a) => (k === "PatientName" ? personName(answerValue(a, k)) : k.endsWith("Date") ? dicomDate(answerValue(a, k)) : answerValue(a, k))]);
        columns.push(["", (a) => h("button", { onclick: (event) => retrieve(event.target, v.modality, v.Level, a) }, "Retrieve")]);
        results.replaceChildren(h("p", { class: "count" }, `${answers.length} answer${answers.length === 1 ? "" : "s"}`), table(columns, answers));
      } catch (error) {
        results.replaceChildren(h("p", { class: "error" }, error.message));
      }
    } },
    h("label", {}, h("span", {}, "Modality"), select),
    h("label", {}, h("span", {}, "Level"), h("select", { name: "Level" }, h("option", {}, "STUDY"), h("option", {}, "SERIES"))),
    field("Patient name", "PatientName", "", { placeholder: "SMITH*" }),
    field("Patient ID", "PatientID"),
    field("Accession", "AccessionNumber"),
    field("Study date from", "from", "", { type: "date" }),
    field("to", "to", "", { type: "date" }),
    h("button", { type: "submit", class: "primary" }, "Query"),
    h("button", { type: "button", onclick: async () => {
      try {
        const result = await api(`/modalities/${encodeURIComponent(select.value)}/echo`, { method: "POST" });
        toast(`C-ECHO ${select.value}: ${result.status}`, result.ok ? "info" : "error");
      } catch (error) {
        toast(error.message, "error");
      }
    } }, "Echo"),
  );
  view.replaceChildren(h("h2", {}, "Query / Retrieve"), form, results);
}

async function retrieve(button, modality, level, answer) {
  button.disabled = true;
  button.textContent = "Retrieving…";
  const keys = { StudyInstanceUID: answerValue(answer, "StudyInstanceUID") };
  if (level === "SERIES") keys.SeriesInstanceUID = answerValue(answer, "SeriesInstanceUID");
  try {
    const result = await api(`/modalities/${encodeURIComponent(modality)}/move`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ Level: level, Query: keys }),
    });
    button.textContent = `Retrieved ${result.completed}`;
    toast(`C-MOVE: ${result.status}, ${result.completed} completed.`);
  } catch (error) {
    button.textContent = "Failed";
    toast(error.message, "error");
  }
}

// --- statistics --------------------------------------------------------------------------------

function metricSums(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    const match = /^([a-z_]+)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const key = match[3] && !match[1].endsWith("_bucket") ? `${match[1]}{${match[3]}}` : match[1];
    sums[key] = (sums[key] || 0) + Number(match[4]);
    if (match[3]) sums[match[1]] = (sums[match[1]] || 0) + Number(match[4]);
  }
  return sums;
}

async function statisticsView() {
  const [stats, metrics] = await Promise.all([api("/statistics"), fetch("/metrics").then((r) => r.text())]);
  const m = metricSums(metrics);
  const commits = m.dicomvault_commit_seconds_count || 0;
  const card = (label, value, note) => h("div", { class: "card" }, h("span", {}, label), h("strong", {}, value), note ? h("small", {}, note) : null);
  const packed = stats.size > 0 ? `${((100 * stats.pack_bytes) / stats.size).toFixed(1)} %` : "–";
  view.replaceChildren(
    h("h2", {}, "Archive"),
    h(
      "div",
      { class: "cards" },
      card("Patients", stats.patients),
      card("Studies", stats.studies),
      card("Series", stats.series),
      card("Instances", stats.instances),
      card("Size as received", bytes(stats.size)),
      card("In packs", bytes(stats.pack_bytes), `${stats.packs} pack${stats.packs === 1 ? "" : "s"}, ${stats.records} records`),
      card("Packs / received", packed, "below 100 %: saved"),
      card("Patient conflicts", stats.patient_conflicts),
    ),
    h("h2", {}, "Ingest since the server started"),
    h(
      "div",
      { class: "cards" },
      card("Stored", m['dicomvault_ingested_instances_total{outcome="stored"}'] || 0),
      card("Duplicates", m['dicomvault_ingested_instances_total{outcome="duplicate"}'] || 0),
      card("Refused", m.dicomvault_refused_instances_total || 0),
      card("Bytes stored", bytes(m.dicomvault_ingested_bytes_total || 0)),
      card("Group commits", commits),
      card("Mean commit", commits ? `${((1000 * m.dicomvault_commit_seconds_sum) / commits).toFixed(1)} ms` : "–"),
      card("HTTP requests", m.dicomvault_http_requests_total || 0),
    ),
    h("p", { class: "note" }, "Prometheus scrapes the same figures at ", h("a", { href: "/metrics" }, "/metrics"), "; the API is described at ", h("a", { href: "/openapi.json" }, "/openapi.json"), "."),
  );
}

// --- routing -------------------------------------------------------------------------------------

async function route() {
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const params = Object.fromEntries(new URLSearchParams(search));
  const [, section = "studies", id] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) {
    const active = link.dataset.section === section || (link.dataset.section === "studies" && ["study", "instance"].includes(section)) || (link.dataset.section === "patients" && section === "patient");
    link.classList.toggle("active", active);
  }
  const views = {
    studies: () => studiesView(params),
    patients: () => patientsView(params),
    patient: () => patientView(decodeURIComponent(id), params),
    study: () => studyView(decodeURIComponent(id)),
    instance: () => instanceView(decodeURIComponent(id)),
    upload: () => uploadView(),
    remote: () => remoteView(),
    statistics: () => statisticsView(),
  };
  try {
    await (views[section] || views.studies)();
  } catch (error) {
    view.replaceChildren(h("p", { class: "error" }, error.message));
  }
}

// The user and a way out, when the server has users.
async function who() {
  const me = await api("/auth/whoami");
  if (me.auth === "none") return;
  const logout = h("button", { type: "button", onclick: async () => {
    await api("/auth/logout", { method: "POST" }).catch(() => null);
    toLogin();
  } }, "Log out");
  document.querySelector(".bar").append(h("span", { class: "who" }, h("span", { class: "user" }, `${me.user} (${me.role})`), logout));
}

window.addEventListener("hashchange", route);
who().catch(() => null);
route();
