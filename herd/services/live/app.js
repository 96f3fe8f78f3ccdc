// The coordinator's live view: polls the JSON API once a second (herd.services.web).
// Plain browser JavaScript, no library: the token is asked for once and kept in this tab.
"use strict";

const TOKEN_KEY = "herd-token";
const POLL_MS = 1000;
const ELEPHANT_ROWS = 200;
const CHART_POINTS = 120;
const STALE_S = 5;  // a switch not heard from for this long is marked

let authRequired = true;
let timer = null;
let generation = 0;  // bumps on every (re)start, so that a stale poll does nothing
const seen = new Set();  // elephants already shown: new ones are highlighted once

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function showLogin(message) {
  stopPolling();
  $("live").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setConn("signed out", "");
  $("token").value = "";
  $("token").focus();
}

function showLive() {
  $("login").hidden = true;
  $("live").hidden = false;
  $("logout").hidden = !authRequired;
}

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = "conn " + cls;
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = {};
  if (authRequired) headers.Authorization = "Bearer " + token();
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new Unauthorized(path);
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function stopPolling() {
  generation += 1;
  if (timer !== null) clearTimeout(timer);
  timer = null;
}

function startPolling() {
  stopPolling();
  seen.clear();
  showLive();
  poll(generation);
}

async function poll(gen) {
  const started = Date.now();
  try {
    const [status, elephants] = await Promise.all([
      api("/api/status"), api("/api/elephants?limit=" + ELEPHANT_ROWS)]);
    if (gen !== generation) return;
    renderStatus(status);
    renderElephants(elephants);
    setConn("live", "ok");
  } catch (e) {
    if (gen !== generation) return;
    if (e instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("The coordinator refused this token (401). Enter it again.");
      return;
    }
    setConn("unreachable", "down");
  }
  if (gen === generation) {
    timer = setTimeout(() => poll(gen), Math.max(0, POLL_MS - (Date.now() - started)));
  }
}

function fmtCount(n) {
  return Number(n).toLocaleString("en-US");
}

function fmtDuration(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}

function fmtTime(unixS) {
  if (unixS === null || unixS === undefined) return "-";
  return new Date(unixS * 1000).toISOString().replace("T", " ").slice(0, 23);
}

function protoName(p) {
  return p === 6 ? "TCP" : p === 17 ? "UDP" : p === 1 ? "ICMP" : String(p);
}

function renderStatus(s) {
  $("uptime").textContent = fmtDuration(s.uptime_s);
  $("epoch").textContent = s.epoch === null ? "-" : String(s.epoch);
  $("hellos").textContent = fmtCount(s.hellos);
  $("reports").textContent = fmtCount(s.reports);
  $("rate").textContent = fmtCount(Math.round(s.reports_per_s));
  $("groups").textContent = fmtCount(Object.keys(s.groups).length);
  drawRate(s.reports_per_s_history.slice(-CHART_POINTS));
  drawSwitches(s.switches, s.now);
}

function drawRate(points) {
  const canvas = $("rate-chart");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 640, h = canvas.clientHeight || 200;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 52, r: 8, t: 8, b: 20 };
  const top = Math.max(1, ...points.map((p) => p[1]));
  g.strokeStyle = "#e2e8f0";
  g.fillStyle = "#718096";
  g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {  // grid lines with their values
    const y = pad.t + (h - pad.t - pad.b) * (1 - i / 4);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(fmtCount(Math.round(top * i / 4)), 4, y + 4);
  }
  g.fillText(points.length + " s", w - pad.r - 30, h - 4);
  if (points.length < 2) return;
  const x = (i) => pad.l + (w - pad.l - pad.r) * i / (points.length - 1);
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / top);
  g.strokeStyle = "#2b6cb0";
  g.lineWidth = 2;
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(i), y(p[1])) : g.moveTo(x(i), y(p[1]))));
  g.stroke();
}

function drawSwitches(switches, now) {
  const box = $("switch-bars");
  const top = Math.max(1, ...switches.map((s) => s.reports));
  box.replaceChildren(...switches.map((s) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.switch = s.name;
    const name = document.createElement("span");
    name.textContent = s.name;
    const track = document.createElement("div");
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * s.reports / top).toFixed(1) + "%";
    track.appendChild(fill);
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = fmtCount(s.reports);
    const age = s.last_seen_ns ? now - s.last_seen_ns / 1e9 : null;
    if (age === null || age > STALE_S) name.className = "stale";
    name.title = age === null ? "never heard from" : "last seen " + age.toFixed(1) + " s ago";
    row.append(name, track, num);
    return row;
  }));
}

function renderElephants(data) {
  $("elephant-count").textContent = fmtCount(data.count);
  const body = $("elephants").tBodies[0];
  body.replaceChildren(...data.elephants.map((x) => {
    const key = [x.epoch, x.src, x.dst, x.sport, x.dport, x.proto].join("|");
    const tr = document.createElement("tr");
    if (!seen.has(key)) {
      seen.add(key);
      tr.className = "new";
    }
    for (const v of [fmtTime(x.detected), x.epoch, x.src + ":" + x.sport,
      x.dst + ":" + x.dport, protoName(x.proto), fmtCount(x.reports)]) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    return tr;
  }));
}

async function init() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    startPolling();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  try {
    const r = await fetch("/live/config.json", { cache: "no-store" });
    authRequired = (await r.json()).auth;
  } catch (e) {
    setConn("unreachable", "down");
  }
  if (authRequired && !token()) showLogin("");
  else startPolling();
}

document.addEventListener("DOMContentLoaded", init);
