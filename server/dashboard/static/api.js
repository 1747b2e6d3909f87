// Talking to the API: JSON in and out, the bearer token (if any) from localStorage, and one
// treatment of every error: ApiError's message says what happened and what to do (401: enter
// the token; 403: refused; 404: not found; 409: not now; 422: which field; 429: retry after N s),
// and notify() shows it in the page (never only in the console); fail() replaces a page that
// could not load.
const TOKEN_KEY = "edgefed-token";

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const field = (d.loc || []).filter((part) => part !== "body").join(".");
      return field && !String(d.msg).startsWith(field) ? `${field}: ${d.msg}` : d.msg;
    }).join("; ");
  }
  return "";
}

export function explain(status, body, retryAfter) {
  const said = detailText(body?.detail) || (typeof body === "string" ? body : "");
  const what = said || `HTTP ${status}`;
  if (status === 401) return `${what} — enter the dashboard's token in the box at the top right`;
  if (status === 403) return `refused: ${what}`;
  if (status === 409) return `not possible now: ${what}`;
  if (status === 429) return `${what}${retryAfter ? ` (retry in ${retryAfter} s)` : ""}`;
  if (status >= 500) return `server error ${status}: ${what}`;
  return what;
}

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super(explain(status, body, retryAfter));
    this.status = status;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { detail: "the dashboard cannot be reached (is it running?)" });
  }
  const text = await response.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch { /* a plain-text refusal */ }
  if (!response.ok) throw new ApiError(response.status, data, response.headers.get("Retry-After"));
  return data;
}

const message = (error) => (error instanceof Error ? error.message : String(error));

// A dismissable banner under the header, for errors of actions (launch, delete, cancel...).
export function notify(error) {
  let box = document.getElementById("notice");
  if (!box) {
    box = el("div", { id: "notice", class: "notice", role: "alert" });
    document.body.insertBefore(box, document.getElementById("main"));
  }
  box.replaceChildren(el("span", {}, message(error)),
    el("button", { type: "button", class: "close", title: "dismiss",
      onclick: () => box.remove() }, "×"));
  if (error instanceof ApiError && error.status === 401) {
    document.querySelector("header .token input")?.focus();
  }
}

// A page whose data could not be loaded says why instead of "loading…".
export function fail(error, title = document.title.replace(/^edgefed · /, "")) {
  document.getElementById("main").replaceChildren(el("h1", {}, title),
    el("div", { class: "card notice", id: "page-error", role: "alert" }, message(error)));
}

// Whatever a page did not catch still shows.
window.addEventListener("unhandledrejection", (event) => notify(event.reason));
window.addEventListener("error", (event) => notify(event.error ?? event.message));

// Header: navigation plus a token box when the server asks for one.
export async function header() {
  const el = document.querySelector("header");
  el.innerHTML = `<a class="brand" href="/">edgefed</a><a href="/">Experiments</a>
    <a href="/experiments/new">New experiment</a><a href="/compare">Compare</a>
    <span class="token"></span>`;
  let info;
  try { info = await api("/api/info"); } catch (error) { notify(error); return; }
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
