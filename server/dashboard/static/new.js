// New-experiment form, generated from the experiment schema (/api/schema/experiment) so that
// every field is there; the fleet gets a device-mix editor fed by the device catalogue. The
// server validates as you type (/api/experiments/validate, the CLI's checks: every wrong field
// at once) and each 422 error is shown beside the field its location names.
import { api, ApiError, bytes, el, header } from "/static/api.js";

const main = document.getElementById("main");
let schema;
let catalogue;

const defs = (s) => (s.$ref ? schema.$defs[s.$ref.split("/").pop()] : s);
const unwrap = (s) => {
  const inner = s.anyOf ? s.anyOf.find((x) => x.type !== "null") : s;
  return { ...defs(inner), nullable: Boolean(s.anyOf), default: s.default,
    description: s.description, title: s.title };
};
const idOf = (path) => `f-${path.replaceAll(".", "-")}`;

function control(path, prop, value) {
  const attrs = { id: idOf(path), name: path, "data-path": path,
    "data-kind": prop.enum ? typeof prop.enum[0] : prop.type };
  if (prop.enum) {
    const options = prop.enum.map((v) => el("option", { value: v, selected: v === value }, v));
    if (prop.nullable) options.unshift(el("option", { value: "", selected: value == null },
      "(experiment default)"));
    return el("select", attrs, ...options);
  }
  const numeric = prop.type === "integer" || prop.type === "number";
  return el("input", { ...attrs, type: numeric ? "number" : "text",
    value: value ?? "", min: prop.minimum, max: prop.maximum,
    step: prop.type === "integer" ? 1 : numeric ? "any" : undefined,
    maxlength: prop.maxLength, placeholder: prop.nullable ? "none" : undefined });
}

function field(path, raw) {
  const prop = unwrap(raw);
  return el("div", { class: "field", "data-field": path },
    el("label", { for: idOf(path) }, prop.title || path), control(path, prop, prop.default),
    prop.description ? el("small", {}, prop.description) : null,
    el("div", { class: "error", id: `err-${idOf(path)}` }));
}

function renumber() {
  const rows = [...document.querySelectorAll("#fleet-editor tr.fleet-row")];
  rows.forEach((tr, i) => tr.querySelectorAll("[data-part]").forEach((input) => {
    const path = `fleet.${i}.${input.dataset.part}`;
    input.dataset.path = path;
    input.id = idOf(path);
  }));
  const total = rows.reduce((n, tr) => n + Number(tr.querySelector("[data-part=count]").value || 0), 0);
  document.getElementById("fleet-total").textContent = `${total} clients`;
}

function fleetRow(entryProps, entry) {
  const row = el("tr", { class: "fleet-row" });
  const device = el("select", { "data-part": "device", "data-kind": "string" },
    ...Object.values(catalogue.profiles).map((p) => el("option", { value: p.name,
      selected: p.name === entry.device,
      title: [p.description, p.budget_note].filter(Boolean).join(" — ") },
    `${p.name} — budget ${bytes(p.budget_bytes)}, RAM ${bytes(p.ram_bytes)}`)));
  const count = el("input", { "data-part": "count", "data-kind": "integer", type: "number",
    min: entryProps.count.minimum, max: entryProps.count.maximum, step: 1, value: entry.count });
  const policy = control("", unwrap(entryProps.policy), entry.policy ?? null);
  policy.dataset.part = "policy";
  policy.removeAttribute("name");
  policy.removeAttribute("data-path");
  count.addEventListener("input", renumber);
  const remove = () => { row.remove(); renumber(); changed(); };
  row.append(el("td", {}, device), el("td", {}, count), el("td", {}, policy),
    el("td", {}, el("button", { type: "button", onclick: remove }, "remove")),
    el("td", { class: "error row-error" }));
  return row;
}

function fleetEditor(raw) {
  const entryProps = defs(raw.items).properties;
  const body = el("tbody");
  const add = (entry) => { body.append(fleetRow(entryProps, entry)); renumber(); changed(); };
  const presets = el("select", { id: "fleet-preset" }, el("option", { value: "" }, "preset…"),
    ...Object.keys(catalogue.fleets).map((name) => el("option", { value: name }, name)));
  presets.onchange = () => {
    if (!presets.value) return;
    body.replaceChildren();
    for (const [device, count] of Object.entries(catalogue.fleets[presets.value])) {
      body.append(fleetRow(entryProps, { device, count }));
    }
    renumber();
    changed();
  };
  const first = Object.keys(catalogue.profiles)[0];
  body.append(fleetRow(entryProps, { device: first, count: 4 }));
  return el("div", { id: "fleet-editor", "data-field": "fleet" },
    el("table", {}, el("thead", {}, el("tr", {}, ...["device", "count", "policy", "", ""].map(
      (h) => el("th", {}, h)))), body),
    el("div", { class: "actions" },
      el("button", { type: "button", id: "fleet-add", onclick: () => add({ device: first, count: 1 }) },
        "add device"), presets, el("span", { id: "fleet-total", class: "muted" })),
    el("div", { class: "error", id: "err-f-fleet" }));
}

function build() {
  const groups = [el("fieldset", {}, el("legend", {}, "Experiment"))];
  for (const [name, raw] of Object.entries(schema.properties)) {
    const target = defs(raw);
    if (target.type === "object" && target.properties) {
      groups.push(el("fieldset", {}, el("legend", {}, name[0].toUpperCase() + name.slice(1)),
        ...Object.entries(target.properties).map(([sub, r]) => field(`${name}.${sub}`, r))));
    } else if (raw.type === "array") {
      groups.push(el("fieldset", {}, el("legend", {}, "Device mix"), fleetEditor(raw)));
    } else {
      groups[0].append(field(name, raw));
    }
  }
  const engine = el("select", { id: "engine" }, ...["simulation", "deployment"].map((e) =>
    el("option", { value: e }, e)));
  const form = el("form", { id: "experiment-form", novalidate: true }, ...groups,
    el("div", { class: "error", id: "form-error" }),
    el("div", { class: "actions" },
      el("button", { type: "submit", id: "create-launch", class: "primary", value: "launch" },
        "Create & launch"),
      el("label", {}, "engine ", engine),
      el("button", { type: "submit", id: "create", value: "create" }, "Create only")));
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", submit);
  main.replaceChildren(el("h1", {}, "New experiment"), el("div", { class: "card" }, form));
  renumber();
}

function parse(input) {
  const value = input.value;
  if (value === "" && input.tagName === "SELECT") return null;
  if (value === "" && input.placeholder === "none") return null;
  const numeric = input.dataset.kind === "integer" || input.dataset.kind === "number";
  return numeric && value !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
}

function collect() {
  const config = {};
  for (const input of document.querySelectorAll("#experiment-form [data-path]")) {
    const parts = input.dataset.path.split(".");
    let node = config;
    parts.slice(0, -1).forEach((part, i) => {
      node[part] ??= /^\d+$/.test(parts[i + 1]) ? [] : {};
      node = node[part];
    });
    node[parts.at(-1)] = parse(input);
  }
  return config;
}

function clearErrors() {
  document.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  document.querySelectorAll("#experiment-form .error").forEach((n) => { n.textContent = ""; });
}

function showErrors(detail) {
  clearErrors();
  for (const error of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const loc = error.loc.filter((part) => part !== "body");
    let target = null;
    for (let n = loc.length; n > 0 && !target; n -= 1) {
      const path = loc.slice(0, n).join(".");
      const input = document.querySelector(`[data-path="${path}"]`);
      if (input) {
        const holder = input.closest(".field") || input.closest("td");
        holder.classList.add("invalid");
        target = document.getElementById(`err-${idOf(path)}`)
          || input.closest("tr")?.querySelector(".row-error");
      } else {
        target = document.getElementById(`err-${idOf(path)}`);
      }
    }
    // no input for it (an unknown field, a syntax error): the form-wide list, field named
    const named = target ? error.msg : [loc.join("."), error.msg].filter(Boolean).join(": ");
    target ??= document.getElementById("form-error");
    target.textContent = [target.textContent, named].filter(Boolean).join("; ");
  }
}

let timer = null;
function changed() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    try {
      await api("/api/experiments/validate", { method: "POST", body: collect() });
      clearErrors();
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) showErrors(error.body.detail);
    }
  }, 300);
}

async function submit(event) {
  event.preventDefault();
  clearTimeout(timer);
  try {
    const experiment = await api("/api/experiments", { method: "POST", body: collect() });
    if (event.submitter?.value !== "launch") { location.href = "/"; return; }
    const run = await api(`/api/experiments/${experiment.id}/launch`, { method: "POST",
      body: { engine: document.getElementById("engine").value } });
    location.href = `/runs/${run.id}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) showErrors(error.body.detail);
    else document.getElementById("form-error").textContent = error.message;
  }
}

// What the chosen compression method keeps and which parameters it reads (GET /api/methods).
function methodHelp(methods) {
  const select = document.querySelector('[data-path="compression.method"]');
  if (!select) return;
  const help = el("small", { id: "method-help" });
  const show = () => {
    const m = methods[select.value];
    help.textContent = m ? `${m.summary}; reads ${m.params.map((p) => p.name).join(", ")
      || "no parameter"}` : "";
  };
  select.after(help);
  select.addEventListener("change", show);
  show();
}

header();
let methods;
[schema, catalogue, methods] = await Promise.all([api("/api/schema/experiment"),
  api("/api/devices"), api("/api/methods")]);
catalogue.profiles = Object.fromEntries(catalogue.profiles.map((p) => [p.name, p]));
build();
methodHelp(Object.fromEntries(methods.map((m) => [m.name, m])));
