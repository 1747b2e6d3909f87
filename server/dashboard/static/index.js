// Experiment list: every experiment with its runs; launch, delete, downloads.
import { api, badge, el, fail, header, notify, when } from "/static/api.js";

const main = document.getElementById("main");

async function launch(id) {
  try {
    const run = await api(`/api/experiments/${id}/launch`, { method: "POST", body: {} });
    location.href = `/runs/${run.id}`;
  } catch (error) { notify(error); }
}

async function remove(id) {
  if (!confirm(`Delete experiment ${id} and all its runs?`)) return;
  try { await api(`/api/experiments/${id}`, { method: "DELETE" }); } catch (error) { notify(error); }
  refresh();
}

function experimentRow(exp) {
  const c = exp.config;
  const clients = c.fleet.reduce((n, f) => n + f.count, 0);
  const runs = el("div", { class: "actions" }, ...exp.runs.slice().reverse().map((r) =>
    el("a", { href: `/runs/${r.id}`, title: r.message || r.status }, badge(r.status),
      ` ${r.id.slice(0, 8)}`)));
  return el("tr", { "data-experiment": exp.id },
    el("td", { class: "num" }, String(exp.id)), el("td", {}, exp.name),
    el("td", {}, `${c.model} · ${c.dataset}`), el("td", {}, c.compression.method),
    el("td", { class: "num" }, String(clients)), el("td", { class: "num" }, String(c.rounds)),
    el("td", {}, when(exp.created_at)), el("td", {}, runs),
    el("td", {}, el("div", { class: "actions" },
      el("button", { class: "primary", onclick: () => launch(exp.id) }, "Launch"),
      el("button", { class: "danger", onclick: () => remove(exp.id) }, "Delete"))));
}

async function render() {
  const experiments = await api("/api/experiments?limit=1000");
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ...["id", "name", "model", "method", "clients", "rounds", "created", "runs", ""].map((h) =>
      el("th", {}, h)))), el("tbody", {}, ...experiments.map(experimentRow)));
  main.replaceChildren(
    el("h1", {}, "Experiments"),
    el("div", { class: "card actions" },
      el("a", { class: "button", href: "/experiments/new" }, "New experiment"),
      el("a", { class: "button", href: "/compare" }, "Compare runs"),
      el("span", { class: "muted" }, "Download all runs:"),
      el("a", { class: "button", href: "/api/export?format=json", download: "" }, "JSON"),
      el("a", { class: "button", href: "/api/export?format=csv&table=clients", download: "" },
        "clients CSV"),
      el("a", { class: "button", href: "/api/export?format=csv&table=rounds", download: "" },
        "rounds CSV")),
    el("div", { class: "card scroll" }, experiments.length ? table
      : el("p", { class: "muted" }, "No experiments yet.")));
}

let loaded = false;
async function refresh() {
  try { await render(); loaded = true; } catch (error) { if (loaded) notify(error); else fail(error); }
}

header();
refresh();
setInterval(refresh, 3000);
