// Compare runs: summary table and the memory-vs-accuracy Pareto chart (front from the API).
// Only finished runs are plotted and compete for the front unless "include unfinished" is on;
// every point is labelled with its run id (the shortest prefix that is unique).
import { api, badge, bytes, el, fail, header, notify, pct } from "/static/api.js";
import { scatter } from "/static/charts.js";

const main = document.getElementById("main");
// colours by registry order (GET /api/methods); the method list itself lives in the registry
const PALETTE = ["#667085", "#f79009", "#2f6fdf", "#12b76a", "#9b4dca", "#d92d20", "#0e9384",
  "#c11574"];
let METHOD_COLORS = {};
const params = new URLSearchParams(location.search);
let selected = new Set(params.getAll("run"));
// memory axes (the record's <metric>_bytes, mean per client); the default is what the
// compression methods change, the whole step's measured peak one choice away
const MEMORY = { activation: "activations kept", training: "training (the budget's quantity)",
  peak_step: "whole-step peak (measured)", compressed: "compressed (paper's metric)",
  peak_forward: "forward peak", total: "total with weights" };
let memory = params.get("memory") || "activation";
let unfinished = params.get("unfinished") === "1";

// The shortest run-id prefix (at least 8 characters) that tells every run apart.
function shortIds(runIds) {
  const ids = [...new Set(runIds)];
  for (let n = 8; n < 64; n += 4) {
    if (new Set(ids.map((id) => id.slice(0, n))).size === ids.length) {
      return (id) => id.slice(0, n);
    }
  }
  return (id) => id;
}

async function render() {
  const scope = `memory=${encodeURIComponent(memory)}&finished_only=${!unfinished}`;
  const all = (await api(`/api/compare?${scope}`)).runs;
  if (!selected.size) selected = new Set(all.filter((r) => r.final_accuracy != null).map((r) => r.run_id));
  const query = [...selected].map((id) => `run=${encodeURIComponent(id)}`).join("&");
  const chosen = selected.size ? (await api(`/api/compare?${scope}&${query}`)).runs : [];
  const plotted = chosen.filter((r) => r.memory_bytes != null && r.final_accuracy != null
    && (unfinished || r.status === "finished"));
  const short = shortIds(all.map((r) => r.run_id).concat(chosen.map((r) => r.run_id)));
  const redraw = () => render().catch(notify);
  const metric = el("select", { id: "memory-metric", onchange: (e) => { memory = e.target.value; redraw(); } },
    ...Object.entries(MEMORY).map(([m, label]) =>
      el("option", { value: m, selected: m === memory }, `${label}, mean per client`)));
  const include = el("label", {}, el("input", { type: "checkbox", id: "include-unfinished",
    checked: unfinished, onchange: (e) => { unfinished = e.target.checked; redraw(); } }),
  " include unfinished runs (failed, interrupted, running…)");
  const toggle = (id) => (e) => { if (e.target.checked) selected.add(id); else selected.delete(id); redraw(); };
  const head = ["", "run", "experiment", "status", "method", "policy", "rounds", "start acc.",
    "final acc.", "best acc.", "activations", "training", "compressed", "step peak",
    "step peak max", "total",
    "ok", "oom", "dropped", "error", "Pareto"];
  const rows = all.map((r) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", checked: selected.has(r.run_id), onchange: toggle(r.run_id) })),
    el("td", {}, el("a", { href: `/runs/${r.run_id}` }, short(r.run_id))),
    el("td", {}, r.experiment_name), el("td", {}, badge(r.status)), el("td", {}, r.method),
    el("td", {}, r.policy), el("td", { class: "num" }, String(r.rounds_done)),
    ...[r.initial_accuracy, r.final_accuracy, r.best_accuracy].map((a) => el("td", { class: "num" }, pct(a))),
    ...[r.activation_bytes_mean, r.training_bytes_mean, r.compressed_bytes_mean,
      r.peak_step_bytes_mean, r.peak_step_bytes_max, r.total_bytes_mean].map((b) =>
      el("td", { class: "num" }, bytes(b))),
    ...[r.num_ok, r.num_oom, r.num_dropped, r.num_error].map((n) => el("td", { class: "num" }, String(n))),
    el("td", {}, selected.has(r.run_id) && chosen.find((c) => c.run_id === r.run_id)?.pareto ? "yes" : "")));
  main.replaceChildren(el("h1", {}, "Compare runs"),
    el("div", { class: "card" }, el("div", { class: "actions" }, el("h2", {}, "Memory vs accuracy"),
      metric, include), el("div", { id: "chart-pareto" }),
    el("div", { class: "legend" }, ...Object.entries(METHOD_COLORS).map(([m, c]) =>
      el("span", {}, el("i", { style: `background:${c}` }), m)),
      el("span", {}, "red ring + dashed line: Pareto front (less memory, more accuracy)"))),
    el("div", { class: "card scroll" }, el("table", { id: "compare-table" },
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))), el("tbody", {}, ...rows))));
  const container = document.getElementById("chart-pareto");
  if (!plotted.length) { container.append(el("p", { class: "muted" }, "Select runs with results.")); return; }
  scatter(container, plotted.map((r) => ({ x: r.memory_bytes, y: r.final_accuracy,
    front: r.pareto, color: METHOD_COLORS[r.method], label: `${r.experiment_name} · ${short(r.run_id)}`,
    title: `${r.experiment_name} run ${r.run_id} (${r.method}, ${r.status}): `
      + `${bytes(r.memory_bytes)}, ${pct(r.final_accuracy)}` })),
  { xFormat: bytes, yFormat: pct, xLabel: `${MEMORY[memory]} per client (mean, log scale)`,
    yLabel: "final accuracy" });
}

header();
api("/api/methods").then((methods) => {
  METHOD_COLORS = Object.fromEntries(methods.map((m, i) => [m.name, PALETTE[i % PALETTE.length]]));
  return render();
}).catch((error) => fail(error));
