// allq dashboard: polls dashboard/state, draws tables and small SVG charts; no libraries.
// Actions use the v1 routes. The API token (when the gateway has one) is typed by the user
// and kept in sessionStorage, sent as "Authorization: Bearer".
"use strict";

const POLL_MS = 1500;
const HISTORY_S = 300;
const MAX_CHARTS = 12;
const COUNTS = ["ready", "reserved", "delayed", "buried", "waiting"];
const TOKEN_KEY = "allq.token";

const history = new Map(); // tube -> [{t, depth, puts, done}]
const last = new Map(); // tube -> {t, total_puts, total_completed}
const peeked = new Map(); // tube -> job or error text
let refreshes = 0;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

async function api(method, path, body) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = {error: {message: text}}; }
  if (response.status === 401) needToken(true);
  if (!response.ok) {
    const err = data && data.error;
    const message = err && typeof err === "object" ? `${err.code || response.status}: ${err.message || ""}` : String(err || response.status);
    throw new Error(message);
  }
  return data;
}

function needToken(shown) {
  document.getElementById("token-form").hidden = !shown;
  document.getElementById("forget-token").hidden = shown || !token();
  if (shown) setStatus("an API token is needed", true);
}

function setStatus(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = bad ? "error" : "dim";
}

function num(value) { return value === null || value === undefined ? "-" : Number(value).toLocaleString("en"); }
function rate(value) { return value === undefined ? "-" : value.toFixed(value >= 10 ? 0 : 1); }
function age(seconds) {
  if (!seconds) return "-";
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function record(state) {
  const now = state.time;
  for (const tube of state.tubes) {
    const before = last.get(tube.name);
    let puts, done;
    if (before && now > before.t) {
      const dt = now - before.t;
      puts = Math.max(0, tube.total_puts - before.total_puts) / dt;
      done = Math.max(0, tube.total_completed - before.total_completed) / dt;
    }
    if (before && now <= before.t) continue; // the same (cached) snapshot
    last.set(tube.name, {t: now, total_puts: tube.total_puts, total_completed: tube.total_completed});
    const points = history.get(tube.name) || [];
    const depth = COUNTS.reduce((sum, key) => sum + (tube[key] || 0), 0);
    points.push({t: now, depth, puts, done});
    while (points.length && points[0].t < now - HISTORY_S) points.shift();
    history.set(tube.name, points);
  }
  const names = new Set(state.tubes.map((t) => t.name));
  for (const name of [...history.keys()]) if (!names.has(name)) { history.delete(name); last.delete(name); }
}

function renderServers(servers) {
  const body = document.querySelector("#servers tbody");
  body.replaceChildren(...servers.map((s) => h("tr", {dataset: {server: s.id || s.address}},
    h("td", {}, s.id || "?"),
    h("td", {class: "text"}, s.address),
    h("td", {class: "text state-" + s.state, dataset: {col: "state"}}, s.state),
    h("td", {dataset: {col: "rtt"}}, s.rtt_ms === null || s.rtt_ms === undefined ? "-" : s.rtt_ms.toFixed(1)),
    h("td", {}, num(s.jobs)),
    h("td", {}, num(s.in_flight)),
    h("td", {class: "text error"}, s.last_error || ""),
  )));
}

async function act(button, method, path, body) {
  button.disabled = true;
  try {
    await api(method, path, body);
    setStatus(`${path.split("/").pop()}: done`);
    await poll();
  } catch (e) {
    setStatus(`${path}: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

function tubePath(name) { return "v1/tubes/" + encodeURIComponent(name); }

function renderTubes(state) {
  const body = document.querySelector("#tubes tbody");
  body.replaceChildren(...state.tubes.map((t) => {
    const points = history.get(t.name) || [];
    const latest = points[points.length - 1] || {};
    const flags = [t.paused ? "paused" : "", t.draining ? "draining" : "", t.throttle_tps ? `≤ ${t.throttle_tps} /s` : ""].filter(Boolean);
    const path = tubePath(t.name);
    return h("tr", {dataset: {tube: t.name}},
      h("td", {}, t.name),
      ...COUNTS.map((key) => h("td", {dataset: {col: key}}, num(t[key]))),
      h("td", {dataset: {col: "puts_per_s"}}, rate(latest.puts)),
      h("td", {dataset: {col: "done_per_s"}}, rate(latest.done)),
      h("td", {}, age(t.oldest_ready_age_s)),
      h("td", {class: "text" + (t.paused ? " paused" : "")}, flags.join(", ")),
      h("td", {class: "text"},
        h("button", {type: "button", class: "kick", disabled: !(t.buried || t.delayed),
          onclick: (e) => act(e.target, "POST", path + "/kick", {bound: Math.max(1, t.buried || t.delayed)})}, "kick"),
        " ",
        t.paused
          ? h("button", {type: "button", class: "unpause", onclick: (e) => act(e.target, "POST", path + "/unpause", {})}, "unpause")
          : h("button", {type: "button", class: "pause", onclick: (e) => act(e.target, "POST", path + "/pause", {})}, "pause"),
      ),
    );
  }));
  const note = document.getElementById("tube-note");
  note.textContent = state.dropped ? `(${state.dropped} of ${state.tube_count} not shown: the fullest are)` : "";
}

function line(points, key, width, height, max) {
  const t0 = points[points.length - 1].t - HISTORY_S;
  const coords = points.filter((p) => p[key] !== undefined).map((p) => {
    const x = ((p.t - t0) / HISTORY_S) * width;
    const y = height - 2 - (max > 0 ? (p[key] / max) * (height - 4) : 0);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return svg("polyline", {class: key, points: coords.join(" ")});
}

function renderCharts(state) {
  const width = 280, height = 70;
  const tubes = [...state.tubes].sort((a, b) => (b.ready + b.reserved) - (a.ready + a.reserved)).slice(0, MAX_CHARTS);
  const charts = tubes.map((t) => {
    const points = history.get(t.name) || [];
    const box = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, role: "img"});
    if (points.length) {
      const depthMax = Math.max(1, ...points.map((p) => p.depth));
      const rateMax = Math.max(1, ...points.map((p) => Math.max(p.puts || 0, p.done || 0)));
      box.append(line(points, "depth", width, height, depthMax), line(points, "puts", width, height, rateMax), line(points, "done", width, height, rateMax));
      const latest = points[points.length - 1];
      return h("div", {class: "chart", dataset: {chart: t.name}},
        h("div", {}, h("b", {}, t.name), h("span", {class: "dim"}, ` depth ${num(latest.depth)} (max ${num(depthMax)}), rates max ${rate(rateMax)}/s`)), box);
    }
    return h("div", {class: "chart", dataset: {chart: t.name}}, h("b", {}, t.name), box);
  });
  document.getElementById("charts").replaceChildren(...charts);
}

function jobView(job) {
  if (typeof job === "string") return h("div", {class: "error"}, job);
  const body = job.body !== undefined ? job.body : `(base64) ${job.body_b64}`;
  return h("div", {class: "job"},
    h("div", {}, h("b", {}, job.id), h("span", {class: "dim"}, ` priority ${job.priority}, releases ${job.releases ?? "-"}, age ${age(job.age_s)}`)),
    h("pre", {}, String(body).slice(0, 2000)));
}

function renderBuried(state) {
  const buried = state.tubes.filter((t) => t.buried > 0);
  const box = document.getElementById("buried");
  if (!buried.length) { box.replaceChildren(h("p", {class: "dim"}, "none")); return; }
  box.replaceChildren(...buried.map((t) => h("div", {dataset: {buried: t.name}},
    h("b", {}, t.name), ` ${num(t.buried)} buried `,
    h("button", {type: "button", class: "peek", onclick: async () => {
      try { peeked.set(t.name, await api("GET", tubePath(t.name) + "/peek?state=buried")); }
      catch (e) { peeked.set(t.name, e.message); }
      renderBuried(state);
    }}, "peek"),
    " ",
    h("button", {type: "button", class: "kick-one", onclick: (e) => act(e.target, "POST", tubePath(t.name) + "/kick", {bound: 1})}, "kick one"),
    peeked.has(t.name) ? jobView(peeked.get(t.name)) : null,
  )));
}

let timer = null;
async function poll() {
  if (timer !== null) { clearTimeout(timer); timer = null; }
  try {
    const state = await api("GET", "dashboard/state");
    needToken(false);
    record(state);
    renderServers(state.servers);
    renderTubes(state);
    renderCharts(state);
    renderBuried(state);
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    const when = new Date(state.time * 1000).toLocaleTimeString();
    setStatus(state.error ? `${state.error} (${when})` : `v${state.version}, updated ${when}`, Boolean(state.error));
  } catch (e) {
    if (document.getElementById("token-form").hidden) setStatus(`no answer: ${e.message}`, true);
  }
  if (timer === null) timer = setTimeout(poll, POLL_MS);
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  poll();
});
document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  poll();
});
poll();
