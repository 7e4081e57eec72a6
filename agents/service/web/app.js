// The streamvid page: streams with live status, a timeline of stored segments per stream, an ask
// box whose answer streams in with clickable evidence, and the event feed. Plain browser
// JavaScript, no build step. The API key is sent as 'Authorization: Bearer KEY' on every call,
// so the event streams are read with fetch() (EventSource cannot send headers).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("streamvid-key") || "", segments: {}, cap: null, held: 0, abort: null };

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const r = await fetch(path, opts);
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.detail) || ("HTTP " + r.status));
  return body;
}

function clock(s) {
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

// Server-Sent Events over fetch: calls onEvent(type, data) for each event until the stream ends.
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) type = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(type, JSON.parse(data));
    }
  }
}

async function thumbnailInto(img, url) {
  try {
    const r = await fetch(url, { headers: headers() });
    if (!r.ok) return;
    img.src = URL.createObjectURL(await r.blob());
  } catch (e) { /* a missing thumbnail leaves the grey box */ }
}

// -- streams and timelines ---------------------------------------------------------------------

function renderStreams(snapshot) {
  const body = $("streams").querySelector("tbody");
  body.innerHTML = "";
  for (const s of snapshot.streams) {
    const tr = document.createElement("tr");
    tr.dataset.stream = s.id;
    const cells = [s.id, s.state, s.frames, s.dropped, s.segments, s.reconnects];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i === 1) { td.className = "state state-" + s.state; if (s.error) td.title = s.error; }
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const rm = document.createElement("button");
    rm.className = "small"; rm.textContent = "remove";
    rm.onclick = () => api("/v1/streams/" + encodeURIComponent(s.id), { method: "DELETE" }).then(refresh);
    td.appendChild(rm); tr.appendChild(td);
    body.appendChild(tr);
  }
  state.cap = snapshot.token_cap; state.held = snapshot.tokens_held;
  const pct = state.cap ? Math.min(100, (100 * state.held) / state.cap) : 0;
  $("budget-fill").style.width = pct + "%";
  $("budget-text").textContent = `${state.held} / ${state.cap || "no cap"} tokens held, ` +
    `${snapshot.segments_live} live segments, ${snapshot.segments_evicted} evicted`;
}

function renderTimelines(rows) {
  const byStream = {};
  for (const s of rows) (byStream[s.stream] = byStream[s.stream] || []).push(s);
  const box = $("timelines");
  box.innerHTML = "";
  for (const [stream, segs] of Object.entries(byStream)) {
    const end = Math.max(1, ...segs.map((s) => s.end)) + 0.5;  // a segment's last frame lasts a sample
    const most = Math.max(1, ...segs.map((s) => s.tokens));
    const total = segs.filter((s) => s.status === "live").reduce((a, s) => a + s.tokens, 0);
    const wrap = document.createElement("div");
    wrap.className = "timeline"; wrap.dataset.stream = stream;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = `${stream}: ${segs.length} segments, ${total} tokens, 0:00 - ${clock(end - 0.5)}`;
    const track = document.createElement("div");
    track.className = "track";
    for (const s of segs) {
      const d = document.createElement("div");
      d.className = "seg" + (s.status === "evicted" ? " evicted" : "");
      d.dataset.id = s.id;
      d.style.left = (100 * s.start) / end + "%";
      d.style.width = Math.min(100 - (100 * s.start) / end, Math.max(0.4, (100 * (s.end - s.start + 0.5)) / end)) + "%";
      d.style.height = Math.max(8, (100 * s.tokens) / most) + "%";
      d.title = `${clock(s.start)}-${clock(s.end)}: ${s.tokens} of ${s.original_tokens} tokens (${s.status})`;
      d.onclick = () => preview(s.id, s.stream, s.start, s.end);
      track.appendChild(d);
    }
    wrap.append(label, track);
    box.appendChild(wrap);
  }
}

async function refresh() {
  try {
    renderStreams(await api("/v1/streams"));
    renderTimelines((await api("/v1/segments?limit=2000")).segments);
    $("conn-state").textContent = "connected";
  } catch (e) {
    $("conn-state").textContent = e.message;
  }
}

// -- asking ----------------------------------------------------------------------------------------

function preview(id, stream, start, end) {
  document.querySelectorAll(".seg.highlight").forEach((el) => el.classList.remove("highlight"));
  const seg = document.querySelector(`.seg[data-id="${id}"]`);
  if (seg) seg.classList.add("highlight");
  if (id < 0) return;
  $("preview").hidden = false;
  $("preview-cap").textContent = `${stream} ${clock(start)}-${clock(end)} (segment ${id})`;
  thumbnailInto($("preview-img"), `/v1/segments/${id}/thumbnail.jpg`);
}

function renderEvidence(answer) {
  const box = $("evidence");
  box.innerHTML = "";
  for (const u of answer.segments) {
    const card = document.createElement("div");
    card.className = "evidence"; card.dataset.id = u.id;
    const img = document.createElement("img");
    img.alt = `${u.stream} ${clock(u.start)}`;
    if (u.thumbnail) thumbnailInto(img, u.thumbnail);
    const cap = document.createElement("div");
    const score = u.score === null ? "" : ` score ${u.score.toFixed(2)}`;
    cap.textContent = `${u.stream} ${clock(u.start)}-${clock(u.end)}${score}` + (u.grain < 1 ? ` (${u.tokens}/${u.stored_tokens})` : "");
    card.append(img, cap);
    card.onclick = () => preview(u.id, u.stream, u.start, u.end);
    box.appendChild(card);
  }
  const t = answer.timings || {};
  $("answer-meta").textContent = `${answer.segments.length} segments, ${answer.visual_tokens}/${answer.max_visual_tokens} visual tokens, ` +
    `${Math.round(1000 * (t.total || 0))} ms` + (answer.evicted.length ? `, ${answer.evicted.length} evicted ranges` : "");
}

async function ask(question) {
  $("answer-text").textContent = ""; $("answer-meta").textContent = "thinking..."; $("evidence").innerHTML = "";
  $("answer").dataset.state = "streaming";
  const r = await fetch("/v1/ask", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ question, stream: true }),
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    $("answer-text").textContent = "error: " + (body.detail || r.status);
    $("answer").dataset.state = "error";
    return;
  }
  await readSSE(r, (type, data) => {
    if (type === "token") $("answer-text").textContent += data.text;
    else if (type === "answer") { $("answer-text").textContent = data.text; renderEvidence(data); $("answer").dataset.state = "done"; }
    else if (type === "error") { $("answer-text").textContent = "error: " + data.detail; $("answer").dataset.state = "error"; }
  });
}

// -- events -------------------------------------------------------------------------------------------

function describe(type, d) {
  if (type === "segment") return `segment ${d.id} stored: ${d.stream} ${clock(d.start)}-${clock(d.end)}, ${d.tokens} tokens`;
  if (type === "status") return `stream ${d.stream || d.id}: ${d.state}` + (d.error ? ` (${d.error})` : "");
  if (type === "alert") return `ALERT ${d.stream} at ${clock(d.start)}: ${d.rule}`;
  return type;
}

async function follow() {
  if (state.abort) state.abort.abort();
  state.abort = new AbortController();
  try {
    const r = await fetch("/v1/events", { headers: headers(), signal: state.abort.signal });
    if (!r.ok) { $("conn-state").textContent = "events: HTTP " + r.status; return; }
    await readSSE(r, (type, data) => {
      const li = document.createElement("li");
      li.className = type; li.textContent = `${new Date().toLocaleTimeString()} ${describe(type, data)}`;
      $("events").prepend(li);
      while ($("events").children.length > 200) $("events").lastChild.remove();
      if (type !== "alert") scheduleRefresh();
    });
  } catch (e) { /* aborted or the service went away */ }
  setTimeout(follow, 2000);  // reconnect
}

let pending = null;
function scheduleRefresh() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 300); }

// -- wiring ---------------------------------------------------------------------------------------------

$("key").value = state.key;
$("key-form").onsubmit = (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem("streamvid-key", state.key);
  refresh(); follow();
};
$("add-form").onsubmit = async (e) => {
  e.preventDefault();
  $("add-error").textContent = "";
  try {
    await api("/v1/streams", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: $("stream-id").value.trim(), source: $("stream-source").value.trim() }),
    });
    refresh();
  } catch (err) { $("add-error").textContent = err.message; }
};
$("ask-form").onsubmit = (e) => { e.preventDefault(); ask($("question").value.trim()); };
setInterval(refresh, 3000);
refresh(); follow();
