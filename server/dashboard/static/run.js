// Run page: status, live charts (accuracy per round, memory vs budget, clients x rounds) and
// the per-client table. A snapshot from /api/runs/{id}, then the event stream from its last id.
import { api, badge, bytes, el, fail, header, notify, num, pct, when } from "/static/api.js";
import { budgetBars, heatmap, lineChart } from "/static/charts.js";

const runId = decodeURIComponent(location.pathname.split("/").pop());
const main = document.getElementById("main");
const COLORS = { oom: "#dc6803", dropped: "#b8bec8", error: "#9b4dca" };
// The memory chart: a device's budget constrains training_bytes = activations kept + gradients
// + optimizer state, drawn stacked as shares of the budget; red means over budget, nothing else.
const COMPONENTS = [["activations kept", "activation_bytes"], ["gradients", "grad_bytes"],
  ["optimizer state", "optimizer_bytes"]];
const UNDER = ["#2f6fdf", "#7aa5f0", "#b9cff7"];
const OVER = ["#d92d20", "#e8706a", "#f2aca8"];
let run; let config;
let budgetNotes = {}; // device name -> what its budget represents (the catalogue's budget_note)
const rounds = new Map();
const clients = new Map();
const key = (c) => `${c.round}|${c.phase}|${c.partition_id}`;

function load(detail) {
  ({ run, config } = detail);
  rounds.clear(); clients.clear();
  detail.rounds.forEach((r) => rounds.set(r.round, r));
  detail.clients.forEach((c) => clients.set(key(c), c));
}

const train = () => [...clients.values()].filter((c) => c.phase === "train");
const numClients = () => config.fleet.reduce((n, f) => n + f.count, 0);

function latestPerClient() {
  const latest = new Map();
  for (const c of train()) {
    if (!latest.has(c.partition_id) || latest.get(c.partition_id).round < c.round) {
      latest.set(c.partition_id, c);
    }
  }
  return [...latest.values()].sort((a, b) => a.partition_id - b.partition_id);
}

function cellColor(c) {
  if (c.status !== "ok") return COLORS[c.status];
  return c.accuracy == null ? "#53b77c" : `hsl(145, 55%, ${88 - 55 * c.accuracy}%)`;
}

const overBudget = (c) => c.training_bytes != null && c.budget_bytes != null
  && c.training_bytes > c.budget_bytes;

function memoryBar(c) {
  const over = overBudget(c);
  const measured = c.status === "ok" && c.training_bytes != null && c.budget_bytes > 0;
  const parts = COMPONENTS.map(([name, field]) => `${name} ${bytes(c[field])}`).join(", ");
  return {
    label: String(c.partition_id), over,
    segments: measured ? COMPONENTS.map(([, field], i) => ({
      value: (c[field] ?? 0) / c.budget_bytes, color: (over ? OVER : UNDER)[i] })) : [],
    missing: c.status === "ok" ? "n/a" : c.status.toUpperCase(),
    missingColor: COLORS[c.status],
    title: `client ${c.partition_id} (${c.device}), round ${c.round}: ${c.status}`
      + (measured ? `, training ${bytes(c.training_bytes)} of budget ${bytes(c.budget_bytes)}`
        + `${over ? " (over budget)" : ""}: ${parts}; whole-step peak ${bytes(c.peak_step_bytes)}`
        : "") + (c.reason ? ` — ${c.reason}` : "")
      + (budgetNotes[c.device] ? `\nbudget: ${budgetNotes[c.device]}` : ""),
  };
}

// One line per device of this run: its budget and what that number represents.
function budgetLegend() {
  const devices = [...new Set(config.fleet.map((f) => f.device))];
  return el("ul", { id: "budget-notes", class: "muted" }, ...devices.filter((d) => budgetNotes[d])
    .map((d) => el("li", {}, el("b", {}, d), `: ${budgetNotes[d]}`)));
}

function skeleton() {
  const cancel = el("button", { id: "cancel", class: "danger", onclick: async () => {
    try { await api(`/api/runs/${runId}/cancel`, { method: "POST" }); } catch (e) { notify(e); }
  } }, "Cancel run");
  const dl = (label, query) => el("a", { class: "button", download: "",
    href: `/api/runs/${runId}/export?${query}` }, label);
  main.replaceChildren(
    el("h1", {}, el("span", { id: "run-title" }), " ", el("span", { id: "run-status" })),
    el("div", { class: "card" },
      el("div", { class: "actions" }, cancel, el("span", { class: "muted" }, "Download:"),
        dl("JSON", "format=json"), dl("clients CSV", "format=csv&table=clients"),
        dl("rounds CSV", "format=csv&table=rounds"),
        el("a", { class: "button", href: `/compare?run=${runId}` }, "Compare")),
      el("p", { id: "run-facts", class: "muted" }), el("div", { id: "run-message" })),
    el("div", { class: "grid" },
      el("div", { class: "card" }, el("h2", {}, "Global test accuracy per round"),
        el("div", { id: "chart-accuracy" })),
      el("div", { class: "card" }, el("h2", {}, "Training memory vs budget (latest round)"),
        el("div", { id: "chart-memory" }),
        el("div", { class: "legend" },
          ...COMPONENTS.map(([name], i) => el("span", {}, el("i", { style: `background:${UNDER[i]}` }), name)),
          el("span", {}, el("i", { style: "background:#1d2433;height:2px" }), "budget"),
          el("span", {}, el("i", { style: `background:${OVER[0]}` }), "over budget")),
        budgetLegend()),
      el("div", { class: "card" }, el("h2", {}, "Clients × rounds"), el("div", { id: "chart-heatmap" }),
        el("div", { class: "legend" },
          el("span", {}, el("i", { style: "background:hsl(145,55%,60%)" }), "ok (darker: higher accuracy)"),
          ...Object.entries(COLORS).map(([s, c]) => el("span", {}, el("i", { style: `background:${c}` }), s)),
          el("span", {}, el("i", { style: "background:#f2f4f7" }), "not sampled")))),
    el("div", { class: "card" },
      el("div", { class: "actions" }, el("h2", {}, "Clients"),
        el("select", { id: "round-select", onchange: render })),
      el("div", { class: "scroll" }, el("table", { id: "client-table" }))));
}

function renderFacts() {
  document.getElementById("run-title").textContent = `${run.experiment_name} · run ${runId.slice(0, 8)}`;
  document.getElementById("run-status").replaceChildren(badge(run.status));
  document.getElementById("cancel").hidden = !["queued", "running"].includes(run.status);
  const done = Math.max(0, ...rounds.keys());
  const counts = {};
  train().forEach((c) => { counts[c.status] = (counts[c.status] || 0) + 1; });
  document.getElementById("run-facts").textContent = [
    `${config.model} on ${config.dataset}`, `${config.compression.method} (${config.policy})`,
    `${numClients()} clients`, `round ${done} of ${config.rounds}`, `engine ${run.engine}`,
    `replies: ${Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ") || "none yet"}`,
    run.started_at ? `started ${when(run.started_at)}` : "",
    run.finished_at ? `ended ${when(run.finished_at)}` : ""].filter(Boolean).join(" · ");
  const message = document.getElementById("run-message");
  message.replaceChildren(...(run.message ? [el("div", { class: "message" }, run.message)] : []));
}

function renderCharts() {
  const points = [...rounds.values()].sort((a, b) => a.round - b.round);
  lineChart(document.getElementById("chart-accuracy"), [
    { name: "accuracy", color: "#2f6fdf", points: points.map((r) => [r.round, r.accuracy]) },
  ], { yDomain: [0, 1], yFormat: pct, xLabel: "round", yLabel: "accuracy" });
  budgetBars(document.getElementById("chart-memory"), latestPerClient().map(memoryBar),
    { yFormat: pct, xLabel: "client", yLabel: "share of training budget" });
  const ids = [...Array(numClients()).keys()];
  const cols = [...Array(config.rounds).keys()].map((i) => i + 1);
  heatmap(document.getElementById("chart-heatmap"), ids, cols, (p, r) => {
    const c = clients.get(`${r}|train|${p}`);
    return c && { color: cellColor(c), title: `client ${p} (${c.device}) round ${r}: ${c.status}`
      + `${c.accuracy != null ? `, accuracy ${pct(c.accuracy)}` : ""}${c.reason ? ` — ${c.reason}` : ""}` };
  }, { xLabel: "round" });
}

const COLUMNS = [
  ["client", (c) => c.partition_id, "num"], ["device", (c) => c.device],
  ["round", (c) => c.round, "num"], ["status", (c) => el("span", { class: `status-${c.status}` }, c.status)],
  ["budget", (c) => bytes(c.budget_bytes), "num"], ["training", (c) => bytes(c.training_bytes), "num"],
  ["activations", (c) => bytes(c.activation_bytes), "num"], ["gradients", (c) => bytes(c.grad_bytes), "num"],
  ["optimizer", (c) => bytes(c.optimizer_bytes), "num"], ["compressed", (c) => bytes(c.compressed_bytes), "num"],
  ["parameters", (c) => bytes(c.param_bytes), "num"], ["transient", (c) => bytes(c.transient_bytes), "num"],
  ["forward peak", (c) => bytes(c.peak_forward_bytes), "num"],
  ["step peak", (c) => bytes(c.peak_step_bytes), "num"], ["total", (c) => bytes(c.total_bytes), "num"],
  ["cgroup peak", (c) => bytes(c.rss_peak_bytes), "num"], ["cgroup limit", (c) => bytes(c.memory_limit_bytes), "num"],
  ["method", (c) => c.method ?? ""], ["last_k", (c) => c.last_k ?? "", "num"],
  ["eps", (c) => num(c.eps), "num"], ["ranks", (c) => (c.ranks ? JSON.stringify(c.ranks) : "")],
  ["batch", (c) => c.batch_size ?? "", "num"], ["accuracy", (c) => pct(c.accuracy), "num"],
  ["loss", (c) => num(c.train_loss), "num"], ["wall s", (c) => num(c.wall_s), "num"],
  ["sim s", (c) => num(c.sim_time_s), "num"], ["reason", (c) => c.reason],
];

const text = (v) => (v instanceof Node ? v : String(v ?? ""));

function renderTable() {
  const select = document.getElementById("round-select");
  const chosen = select.value;
  const roundsSeen = [...new Set(train().map((c) => c.round))].sort((a, b) => a - b);
  select.replaceChildren(el("option", { value: "" }, "latest round of each client"),
    ...roundsSeen.map((r) => el("option", { value: r, selected: String(r) === chosen }, `round ${r}`)));
  const rows = chosen === "" ? latestPerClient()
    : train().filter((c) => String(c.round) === chosen).sort((a, b) => a.partition_id - b.partition_id);
  document.getElementById("client-table").replaceChildren(
    el("thead", {}, el("tr", {}, ...COLUMNS.map(([h, , cls]) => el("th", { class: cls }, h)))),
    el("tbody", {}, ...rows.map((c) => el("tr", {}, ...COLUMNS.map(([, f, cls]) =>
      el("td", { class: cls }, text(f(c))))))));
}

function render() { renderFacts(); renderCharts(); renderTable(); }

let pending = null;
const schedule = () => { pending ??= setTimeout(() => { pending = null; render(); }, 200); };

function listen() {
  const source = new EventSource(`/api/runs/${runId}/stream?after=${run.last_event_id}`);
  source.addEventListener("client", (m) => { const c = JSON.parse(m.data).client; clients.set(key(c), c); schedule(); });
  source.addEventListener("round", (m) => { const r = JSON.parse(m.data).round; rounds.set(r.round, r); schedule(); });
  source.addEventListener("state", async () => {
    try { load(await api(`/api/runs/${runId}`)); schedule(); } catch (e) { notify(e); }
  });
  source.addEventListener("end", () => source.close());
}

header();
try {
  const [detail, catalogue] = await Promise.all([api(`/api/runs/${runId}`), api("/api/devices")]);
  load(detail);
  budgetNotes = Object.fromEntries(catalogue.profiles.map((p) => [p.name, p.budget_note]));
  skeleton();
  render();
  listen();
} catch (error) { fail(error, `Run ${runId}`); }
