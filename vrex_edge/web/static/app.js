// The vrex-edge web view: MJPEG for the frame, server-sent events for narration and stats,
// POST /ask for questions. Data from the server is only ever set as textContent.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const query = token ? "?token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
const seen = new Set();
const MAX_RECORDS = 200;
let ended = false;

function clock(t) {
  const ms = Math.round(Math.max(t, 0) * 1000);
  const pad = (n, w) => String(n).padStart(w, "0");
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}.${pad(ms % 1000, 3)}`;
}

function bytes(n) {
  for (const unit of ["B", "KB", "MB", "GB"]) {
    if (Math.abs(n) < 1024 || unit === "GB") return unit === "B" ? `${n} B` : `${n.toFixed(1)} ${unit}`;
    n /= 1024;
  }
}

function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

function addRecord(r) {
  if (seen.has(r.id)) return;
  seen.add(r.id);
  const list = $("records");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
  const li = document.createElement("li");
  li.dataset.id = String(r.id);
  li.append(span("time", clock(r.t)));
  if (r.question !== null) {
    li.className = "answer";
    li.append(span("q", r.question), span("a", r.text));
  } else {
    li.append(span("text", r.text));
  }
  list.append(li);
  while (list.children.length > MAX_RECORDS) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function showStatus(s) {
  const set = (id, text) => { $(id).textContent = text; };
  if (s.frame_t !== null && s.frame_t !== undefined) set("frame-time", clock(s.frame_t));
  if (s.captured_fps !== undefined) {
    set("s-captured", `${s.captured_fps.toFixed(1)} fps`);
    set("s-processed", `${s.processed_fps.toFixed(1)} fps`);
    set("s-dropped", String(s.dropped));
    set("s-lag", s.lag_ms === null ? "-" : `${Math.round(s.lag_ms)} ms`);
    set("s-state", s.message ? `${s.state}: ${s.message}` : s.state);
  }
  if (s.frame_ms !== undefined) set("s-frame", `${Math.round(s.frame_ms)} ms`);
  if (s.cache_tokens !== undefined) {
    set("s-cache", `${s.cache_tokens.toLocaleString("en")} tok` + (s.cache_bytes !== undefined ? `, ${bytes(s.cache_bytes)}` : ""));
  }
  if (s.kept_prefill !== undefined && s.kept_prefill !== null) set("s-kept", `${(100 * s.kept_prefill).toFixed(1)}%`);
}

function connect() {
  const events = new EventSource("events" + query);
  events.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn live"; };
  events.onerror = () => {
    if (!ended) { $("conn").textContent = "reconnecting"; $("conn").className = "conn"; }
  };
  events.addEventListener("hello", (e) => {
    const d = JSON.parse(e.data);
    $("source").textContent = d.title;
    $("question").maxLength = d.question_chars;
  });
  events.addEventListener("record", (e) => addRecord(JSON.parse(e.data)));
  events.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
  events.addEventListener("end", () => {
    ended = true;
    events.close();
    $("conn").textContent = "stream ended";
    $("conn").className = "conn ended";
  });
}

function video() {
  const img = $("frame");
  img.onerror = () => { if (!ended) setTimeout(() => { img.src = "stream.mjpg" + query + (query ? "&" : "?") + "r=" + Date.now(); }, 2000); };
  img.src = "stream.mjpg" + query;
}

async function ask(event) {
  event.preventDefault();
  const input = $("question");
  const question = input.value.trim();
  if (!question) return;
  const headers = { "Content-Type": "application/json" };
  if (token) headers["X-Vrex-Token"] = token;
  const note = $("ask-status");
  try {
    const r = await fetch("ask", { method: "POST", headers, body: JSON.stringify({ question }) });
    const d = await r.json();
    if (r.ok) {
      note.textContent = `asked: ${d.question} (the answer comes in the narration)`;
      input.value = "";
    } else {
      note.textContent = d.error || `refused (${r.status})`;
    }
  } catch (e) {
    note.textContent = "the server cannot be reached";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", ask);
  video();
  connect();
});
