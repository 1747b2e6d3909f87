// Small SVG charts: line, stacked bars against a budget, heatmap, scatter with a front.
const NS = "http://www.w3.org/2000/svg";
const M = { top: 12, right: 16, bottom: 36, left: 64 };

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

const titled = (node, text) => { if (text) node.append(s("title", {}, text)); return node; };

// Scales map a domain to pixels; ticks() gives tick values.
export function linear([d0, d1], [r0, r1]) {
  if (d0 === d1) { d0 -= 1; d1 += 1; }
  const f = (x) => r0 + ((x - d0) / (d1 - d0)) * (r1 - r0);
  f.ticks = (n = 5) => {
    const step0 = (d1 - d0) / n;
    const mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= step0);
    const out = [];
    for (let t = Math.ceil(d0 / step) * step; t <= d1 + 1e-9; t += step) out.push(+t.toFixed(10));
    return out;
  };
  return f;
}

export function log2([d0, d1], [r0, r1]) {
  const l0 = Math.log2(Math.max(d0, 1)); let l1 = Math.log2(Math.max(d1, 1));
  if (l1 <= l0) l1 = l0 + 1;
  const f = (x) => r0 + ((Math.log2(Math.max(x, 1)) - l0) / (l1 - l0)) * (r1 - r0);
  f.ticks = (n = 5) => {
    const step = Math.max(1, Math.ceil((l1 - l0) / n));
    const out = [];
    for (let e = Math.ceil(l0); e <= l1; e += step) out.push(2 ** e);
    return out;
  };
  return f;
}

function frame(container, width, height) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    style: `max-width: ${width}px` });
  container.replaceChildren(svg);
  return svg;
}

function axes(svg, x, y, { width, height, xTicks, yTicks, xFormat, yFormat, xLabel, yLabel }) {
  const grid = s("g", { class: "grid" });
  const ax = s("g", { class: "axis" });
  for (const t of yTicks) {
    grid.append(s("line", { x1: M.left, x2: width - M.right, y1: y(t), y2: y(t) }));
    ax.append(s("text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  for (const t of xTicks) {
    ax.append(s("text", { x: x(t), y: height - M.bottom + 16, "text-anchor": "middle" },
      xFormat(t)));
  }
  ax.append(s("line", { x1: M.left, x2: width - M.right, y1: height - M.bottom,
    y2: height - M.bottom }));
  ax.append(s("line", { x1: M.left, x2: M.left, y1: M.top, y2: height - M.bottom }));
  if (xLabel) ax.append(s("text", { x: (M.left + width - M.right) / 2, y: height - 4,
    "text-anchor": "middle" }, xLabel));
  if (yLabel) ax.append(s("text", { x: 12, y: (M.top + height - M.bottom) / 2,
    transform: `rotate(-90 12 ${(M.top + height - M.bottom) / 2})`,
    "text-anchor": "middle" }, yLabel));
  svg.append(grid, ax);
}

// series: [{name, color, points: [[x, y], ...]}]
export function lineChart(container, series, opts = {}) {
  const width = 460; const height = 260;
  const svg = frame(container, width, height);
  const xs = series.flatMap((se) => se.points.map((p) => p[0]));
  const ys = series.flatMap((se) => se.points.map((p) => p[1]));
  const x = linear([Math.min(0, ...xs), Math.max(1, ...xs)], [M.left, width - M.right]);
  const y = linear(opts.yDomain || [Math.min(...ys, 0), Math.max(...ys, 1)],
    [height - M.bottom, M.top]);
  axes(svg, x, y, { width, height, xTicks: x.ticks(Math.min(10, Math.max(...xs, 1))),
    yTicks: y.ticks(5), xFormat: (t) => (Number.isInteger(t) ? t : ""),
    yFormat: opts.yFormat || String, xLabel: opts.xLabel, yLabel: opts.yLabel });
  for (const se of series) {
    if (!se.points.length) continue;
    const d = se.points.map((p, i) => `${i ? "L" : "M"}${x(p[0])},${y(p[1])}`).join("");
    svg.append(s("path", { d, fill: "none", stroke: se.color, "stroke-width": 2,
      class: "series" }));
    for (const [px, py] of se.points) {
      svg.append(titled(s("circle", { cx: x(px), cy: y(py), r: 3.5, fill: se.color,
        class: "point" }), `${se.name} round ${px}: ${(opts.yFormat || String)(py)}`));
    }
  }
}

// items: [{label, segments: [{value, color}], over, missing, missingColor, title}], values in
// units of a budget (1 = the budget, one dashed line): one stacked bar per item, in a group
// g.client (g.client.over when the item is over its budget); an item without segments shows
// its ``missing`` text instead.
export function budgetBars(container, items, opts = {}) {
  const width = 460; const height = 260;
  const svg = frame(container, width, height);
  const totals = items.map((it) => it.segments.reduce((sum, seg) => sum + seg.value, 0));
  const y = linear([0, Math.max(1.25, ...totals) * 1.05], [height - M.bottom, M.top]);
  const band = (width - M.left - M.right) / Math.max(items.length, 1);
  const x = (i) => M.left + band * i + band / 2;
  const labelEvery = Math.ceil(items.length / 20);
  axes(svg, x, y, { width, height, xTicks: [], yTicks: y.ticks(5), xFormat: String,
    yFormat: opts.yFormat || String, xLabel: opts.xLabel, yLabel: opts.yLabel });
  const w = Math.max(2, band * 0.7);
  items.forEach((it, i) => {
    const group = titled(s("g", { class: it.over ? "client over" : "client",
      "data-label": it.label }), it.title);
    let base = 0;
    for (const seg of it.segments) {
      if (seg.value > 0) {
        group.append(s("rect", { x: x(i) - w / 2, y: y(base + seg.value), width: w,
          height: y(base) - y(base + seg.value), fill: seg.color, class: "bar" }));
      }
      base += seg.value;
    }
    if (!totals[i] && it.missing) {  // OOM, DROPPED...: upright, or a mark when bars are narrow
      const bottom = height - M.bottom - 4;
      const color = it.missingColor || "#667085";
      group.append(band >= 13
        ? s("text", { x: x(i) + 4, y: bottom, transform: `rotate(-90 ${x(i) + 4} ${bottom})`,
          fill: color, class: "missing" }, it.missing)
        : s("rect", { x: x(i) - w / 2, y: bottom - 8, width: w, height: 8, fill: color,
          class: "missing" }));
    }
    svg.append(group);
    if (i % labelEvery === 0) {
      svg.append(s("text", { x: x(i), y: height - M.bottom + 14, "text-anchor": "middle" },
        it.label));
    }
  });
  svg.append(titled(s("line", { x1: M.left, x2: width - M.right, y1: y(1), y2: y(1),
    stroke: "#1d2433", "stroke-width": 1.5, "stroke-dasharray": "6 3", class: "budget" }),
  "budget"));
}

// rows x cols grid; cell(r, c) -> {color, title} or null (no reply that round). Past
// MAX_SVG_CELLS the grid is painted on a canvas (no per-cell tooltips) to stay responsive.
const MAX_SVG_CELLS = 20000;

export function heatmap(container, rows, cols, cell, opts = {}) {
  if (rows.length * cols.length > MAX_SVG_CELLS) { heatCanvas(container, rows, cols, cell); return; }
  const cw = Math.max(10, Math.min(36, 560 / Math.max(cols.length, 1)));
  const ch = Math.max(6, Math.min(18, 480 / Math.max(rows.length, 1)));
  const width = M.left + cw * cols.length + M.right;
  const height = M.top + ch * rows.length + M.bottom;
  const svg = frame(container, width, height);
  const labelEvery = Math.ceil(rows.length / 30);
  rows.forEach((r, i) => {
    if (i % labelEvery === 0) {
      svg.append(s("text", { x: M.left - 6, y: M.top + ch * i + ch * 0.75,
        "text-anchor": "end" }, opts.rowLabel ? opts.rowLabel(r) : r));
    }
    cols.forEach((c, j) => {
      const v = cell(r, c);
      svg.append(titled(s("rect", { x: M.left + cw * j, y: M.top + ch * i, width: cw - 1,
        height: ch - 1, fill: v ? v.color : "#f2f4f7", class: v ? "cell filled" : "cell" }),
      v && v.title));
    });
  });
  const colEvery = Math.ceil(cols.length / 20);
  cols.forEach((c, j) => {
    if (j % colEvery === 0) {
      svg.append(s("text", { x: M.left + cw * j + cw / 2, y: M.top + ch * rows.length + 14,
        "text-anchor": "middle" }, c));
    }
  });
  if (opts.xLabel) svg.append(s("text", { x: M.left + (cw * cols.length) / 2, y: height - 4,
    "text-anchor": "middle" }, opts.xLabel));
}

function heatCanvas(container, rows, cols, cell) {
  const canvas = document.createElement("canvas");
  canvas.width = Math.min(1200, cols.length * 4);
  canvas.height = Math.min(1200, rows.length * 2);
  canvas.className = "chart";
  const ctx = canvas.getContext("2d");
  const cw = canvas.width / cols.length; const ch = canvas.height / rows.length;
  ctx.fillStyle = "#f2f4f7";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  rows.forEach((r, i) => cols.forEach((c, j) => {
    const v = cell(r, c);
    if (v) { ctx.fillStyle = v.color; ctx.fillRect(j * cw, i * ch, Math.max(cw, 1), Math.max(ch, 1)); }
  }));
  container.replaceChildren(canvas,
    Object.assign(document.createElement("small"), { textContent:
      `${rows.length} clients (rows) x ${cols.length} rounds (columns)` }));
}

// points: [{x, y, label, front, title}]; the front's points are joined in x order.
export function scatter(container, points, opts = {}) {
  const width = 720; const height = 360;
  const svg = frame(container, width, height);
  const xs = points.map((p) => p.x); const ys = points.map((p) => p.y);
  const x = log2([Math.min(...xs, 1024) / 1.5, Math.max(...xs, 2048) * 1.5],
    [M.left, width - M.right]);
  const y = linear([Math.max(0, Math.min(...ys, 1) - 0.05), Math.min(1, Math.max(...ys, 0) + 0.05)],
    [height - M.bottom, M.top]);
  axes(svg, x, y, { width, height, xTicks: x.ticks(7), yTicks: y.ticks(5),
    xFormat: opts.xFormat || String, yFormat: opts.yFormat || String,
    xLabel: opts.xLabel, yLabel: opts.yLabel });
  const front = points.filter((p) => p.front).sort((a, b) => a.x - b.x);
  if (front.length > 1) {
    svg.append(s("path", { d: front.map((p, i) => `${i ? "L" : "M"}${x(p.x)},${y(p.y)}`).join(""),
      fill: "none", stroke: "#d92d20", "stroke-width": 1.5, "stroke-dasharray": "5 3",
      class: "front" }));
  }
  const placed = [];  // label boxes drawn so far: a label moves down until it overlaps none
  for (const p of points) {
    svg.append(titled(s("circle", { cx: x(p.x), cy: y(p.y), r: p.front ? 6 : 4.5,
      fill: p.color || "#2f6fdf", stroke: p.front ? "#d92d20" : "none", "stroke-width": 2,
      class: "point" }), p.title));
    const right = x(p.x) > width / 2;
    const w = 6.6 * String(p.label).length; const h = 14;
    const left = right ? x(p.x) - 8 - w : x(p.x) + 8;
    let top = y(p.y) - 8 - h + 3;
    while (placed.some((b) => left < b.left + b.w && b.left < left + w && top < b.top + h
      && b.top < top + h)) top += h;
    placed.push({ left, top, w });
    svg.append(s("text", { x: x(p.x) + (right ? -8 : 8), y: top + h - 3,
      "text-anchor": right ? "end" : "start", class: "label" }, p.label));
  }
}
