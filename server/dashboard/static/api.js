// Talking to the API: JSON in and out, the bearer token (if any) from localStorage.
const TOKEN_KEY = "edgefed-token";

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Header: navigation plus a token box when the server asks for one.
export async function header() {
  const el = document.querySelector("header");
  el.innerHTML = `<a class="brand" href="/">edgefed</a><a href="/">Experiments</a>
    <a href="/experiments/new">New experiment</a><a href="/compare">Compare</a>
    <span class="token"></span>`;
  const info = await api("/api/info");
  if (!info.auth_required) return;
  const box = document.createElement("input");
  box.type = "password";
  box.placeholder = "token";
  box.value = localStorage.getItem(TOKEN_KEY) || "";
  box.onchange = () => localStorage.setItem(TOKEN_KEY, box.value);
  el.querySelector(".token").append(box);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const pct = (x) => (x === null || x === undefined ? "" : `${(100 * x).toFixed(1)}%`);
export const num = (x, digits = 3) =>
  (x === null || x === undefined ? "" : Number(x).toPrecision(digits));
export const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
export const badge = (status) => el("span", { class: `badge ${status}` }, status);
