// runtime-core status page: polls /status.json and draws the tables and charts.
// No library: two small line charts per model are drawn on <canvas> by hand.
"use strict";

const POLL_MS = 2000;
const COLORS = { rps: "#2563eb", p50: "#059669", p99: "#d97706", grid: "#e5e8ee", text: "#667085" };

function fmt(value, digits) {
  if (value === null || value === undefined) return "-";
  return Number(value).toFixed(digits);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function errorsText(errors) {
  const names = { client_error: "client", server_error: "server", rejected: "rejected", deadline_expired: "expired" };
  const parts = Object.entries(errors).filter(([, n]) => n > 0).map(([k, n]) => `${names[k] || k} ${n}`);
  return parts.length ? parts.join(", ") : "0";
}

function renderServer(data) {
  const s = data.server;
  document.getElementById("version").textContent = s.version;
  document.getElementById("uptime").textContent = duration(s.uptime);
  document.getElementById("processes").textContent = String(s.processes);
  document.getElementById("cpu").textContent = s.cpu_cores === null ? "-" : `${(s.cpu_cores * 100).toFixed(0)} % of a core`;
  document.getElementById("memory").textContent = bytes(s.memory_bytes);
  document.getElementById("url").textContent = s.grpc ? `${s.url} (gRPC ${s.grpc})` : s.url;
  document.getElementById("extensions").textContent = s.extensions.join(", ");
}

// Each version of a model is its own row and card.
function modelKey(m) {
  return m.version ? `${m.name}/${m.version}` : m.name;
}

function renderTable(models) {
  const body = document.querySelector("#models tbody");
  const rows = [];
  for (const m of models) {
    const tr = document.createElement("tr");
    tr.dataset.model = m.name;
    tr.dataset.version = m.version || "";
    if (m.trouble.length) tr.classList.add("trouble");
    cell(tr, m.name, "name");
    cell(tr, m.version || "-", "version");
    cell(tr, m.runtime || "-", "runtime");
    const state = cell(tr, m.state, `state ${m.state}`);
    state.title = m.reason || "";
    if (m.trouble.length) {
      const why = document.createElement("span");
      why.className = "trouble-why";
      why.textContent = m.trouble.join(", ");
      state.appendChild(why);
    }
    if (m.residency && m.residency !== "resident") {
      const residency = document.createElement("span");
      residency.className = "residency";
      residency.textContent = m.residency;
      state.appendChild(residency);
    }
    if (m.reason && m.state !== "READY") {
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = m.reason;
      state.appendChild(reason);
    }
    cell(tr, m.workers ? `${m.workers.ready}/${m.workers.total}` : "-", "workers");
    cell(tr, m.restarts === null ? "-" : String(m.restarts), "restarts");
    cell(tr, String(m.queued), "queued");
    cell(tr, String(m.inflight), "inflight");
    cell(tr, m.weight === null ? "-" : String(m.weight), "weight");
    cell(tr, fmt(m.requests_per_second, 1), "rps");
    cell(tr, fmt(m.p50_ms, 2), "p50");
    cell(tr, fmt(m.p99_ms, 2), "p99");
    cell(tr, String(m.success), "success");
    cell(tr, errorsText(m.errors), "errors");
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function chart(canvas, times, lines, unit) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400, height = canvas.clientHeight || 120;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const left = 44, right = 6, top = 6, bottom = 16;
  const w = width - left - right, h = height - top - bottom;
  let max = 0;
  for (const line of lines) for (const v of line.values) if (v !== null && v > max) max = v;
  max = max > 0 ? max * 1.1 : 1;
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  for (let i = 0; i <= 2; i += 1) {
    const y = top + h - (h * i) / 2;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + w, y); ctx.stroke();
    const v = (max * i) / 2;
    ctx.fillText(`${v >= 100 ? v.toFixed(0) : v.toPrecision(2)}${unit}`, 2, y + 3);
  }
  ctx.fillText("5 min ago", left, height - 3);
  ctx.fillText("now", left + w - 18, height - 3);
  const n = times.length;
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    line.values.forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      const x = left + (n > 1 ? (w * i) / (n - 1) : 0), y = top + h - (h * v) / max;
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    });
    ctx.stroke();
  }
}

function legend(parent, items) {
  const p = document.createElement("div");
  p.className = "legend";
  for (const [label, color] of items) {
    const swatch = document.createElement("b");
    swatch.style.background = color;
    p.appendChild(swatch);
    p.appendChild(document.createTextNode(label));
  }
  parent.appendChild(p);
}

function renderCharts(models) {
  const box = document.getElementById("charts");
  const cards = new Map([...box.children].map((c) => [c.dataset.key, c]));
  const wanted = [];
  for (const m of models) {
    if (!m.series) continue; // many models: only the busiest are charted
    let card = cards.get(modelKey(m));
    if (!card) {
      card = document.createElement("div");
      card.className = "card";
      card.dataset.key = modelKey(m);
      card.dataset.model = m.name;
      card.dataset.version = m.version || "";
      const title = document.createElement("h3");
      card.appendChild(title);
      legend(card, [["requests/s", COLORS.rps]]);
      const rps = document.createElement("canvas");
      rps.className = "throughput";
      card.appendChild(rps);
      legend(card, [["p50 ms", COLORS.p50], ["p99 ms", COLORS.p99]]);
      const lat = document.createElement("canvas");
      lat.className = "latency";
      card.appendChild(lat);
    }
    card.querySelector("h3").textContent = `${m.name}${m.version ? ` (version ${m.version})` : ""}: ${m.state}`;
    card.classList.toggle("trouble", m.trouble.length > 0);
    wanted.push(card);
    const s = m.series;
    chart(card.querySelector("canvas.throughput"), s.time, [{ values: s.requests_per_second, color: COLORS.rps }], "");
    chart(card.querySelector("canvas.latency"), s.time,
      [{ values: s.p50_ms, color: COLORS.p50 }, { values: s.p99_ms, color: COLORS.p99 }], "");
  }
  box.replaceChildren(...wanted);
}

// The line above the table (status.py's _shown writes the same).
function renderShown(shown, total) {
  document.getElementById("shown").textContent =
    shown >= total
      ? `${total} model${total !== 1 ? "s" : ""}`
      : `${shown} of ${total} models shown: the troubled and the busiest first; filter by name to find others`;
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const filter = document.getElementById("filter").value.trim();
    const url = filter ? `/status.json?model=${encodeURIComponent(filter)}` : "/status.json";
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    const data = await response.json();
    renderServer(data);
    renderTable(data.models);
    renderShown(data.models.length, data.total);
    renderCharts(data.models);
    error.hidden = true;
    document.body.dataset.updated = String(data.server.time);
  } catch (exc) {
    error.textContent = `Cannot reach the server (${exc.message}); retrying.`;
    error.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
