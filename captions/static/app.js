// The publisher page: microphone -> /v1/stream (msgpack over WebSocket) -> live captions.
import { encode, decode } from "./msgpack.js";
import { listMicrophones, startCapture } from "./audio.js";
import { CaptionView } from "./captions-view.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const view = new CaptionView($("captions"));
let socket = null, stopCapture = null, sessionId = null;

$("key").value = params.get("key") || localStorage.getItem("captions-key") || "";

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function refreshMicrophones() {
  try {
    const mics = await listMicrophones();
    $("mic").replaceChildren(...mics.map((d, i) => new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
    $("start").disabled = mics.length === 0;
    status(mics.length ? "Ready" : "No microphone found", mics.length === 0);
  } catch (err) {
    status(`Microphone unavailable: ${err.message}`, true);
  }
}

function authHeaders() {
  return { Authorization: `Bearer ${$("key").value.trim()}` };
}

// Errors that reconnecting cannot mend (protocol.md): the stream is over.
const FATAL = new Set(["bad_frame", "unsupported_encoding", "frame_too_large", "bad_audio", "bad_request",
  "unauthorized", "quota_exceeded", "resume_failed", "idle_timeout", "internal"]);
const FRAME_SAMPLES = 1600;
// Audio sent but not acknowledged (`ack_s` of words frames): sent again after a resume.
// kept[i] starts at sample keptFrom + i * 1600 of the session.
let kept = [], keptFrom = 0, resumeToken = null, ended = false, finished = false, failures = 0;

function keep(frame) {
  kept.push(frame);
  if (kept.length > 3000) { kept.shift(); keptFrom += FRAME_SAMPLES; } // at most 300 s
}

function forgetBefore(seconds) {
  const drop = Math.min(kept.length, Math.max(0, Math.floor((seconds * 16000 - keptFrom) / FRAME_SAMPLES)));
  kept.splice(0, drop);
  keptFrom += drop * FRAME_SAMPLES;
}

function sendAudio(pcm) {
  socket.send(encode({ type: "audio", data: new Uint8Array(pcm.buffer) }));
}

async function start() {
  const key = $("key").value.trim();
  localStorage.setItem("captions-key", key);
  $("start").disabled = true;
  sessionId = null; resumeToken = null; kept = []; keptFrom = 0; ended = false; finished = false; failures = 0;
  // Capture starts inside the click, so the AudioContext may run (autoplay policy);
  // frames are kept until the server acknowledges them, and sent while a session is up.
  try {
    stopCapture = await startCapture($("mic").value, (pcm) => {
      keep(pcm);
      if (sessionId && socket && socket.readyState === WebSocket.OPEN && socket.live) sendAudio(pcm);
    });
  } catch (err) {
    status(`Cannot capture the microphone: ${err.message}`, true);
    $("start").disabled = false;
    return;
  }
  connect(key);
}

// One socket; when it drops before `final`, a new one resumes the session (maybe on another ingest replica).
function connect(key) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // Browsers cannot set headers on WebSockets: the key travels as ?key=.
  socket = new WebSocket(`${scheme}://${location.host}/v1/stream?key=${encodeURIComponent(key)}`);
  socket.binaryType = "arraybuffer";
  let fatal = false;
  socket.onopen = () => {
    const start = { type: "start", sample_rate: 16000, encoding: "pcm_s16le", language: $("language").value };
    if (resumeToken) start.resume = { session_id: sessionId, token: resumeToken, words: view.words };
    socket.send(encode(start));
  };
  socket.onmessage = (e) => {
    const msg = decode(e.data);
    if (msg.type === "ready") {
      failures = 0;
      resumeToken = msg.resume_token;
      // Everything kept from where the session resumes (all of it for a new one), to the sample,
      // then live frames.
      const skip = Math.max(0, Math.round((msg.resume_from_s || 0) * 16000) - keptFrom);
      const first = Math.floor(skip / FRAME_SAMPLES);
      kept.slice(first).forEach((pcm, i) => sendAudio(i === 0 ? pcm.slice(skip - first * FRAME_SAMPLES) : pcm));
      socket.live = true;
      if (ended) socket.send(encode({ type: "end" }));
    } else if (msg.type === "words" && msg.ack_s !== undefined) {
      forgetBefore(msg.ack_s);
    } else if (msg.type === "final") {
      finished = true;
    } else if (msg.type === "error" && FATAL.has(msg.code)) {
      fatal = true;
    }
    onMessage(msg);
  };
  socket.onclose = async (e) => {
    if (!finished && !fatal && resumeToken && failures < 60) {
      failures += 1;
      status(`Reconnecting… (${failures})`);
      setTimeout(() => connect(key), Math.min(2000, 200 * failures));
      return;
    }
    if (stopCapture) { await stopCapture(); stopCapture = null; }
    $("start").disabled = false;
    $("stop").disabled = true;
    const done = $("status").classList.contains("error") || $("status").textContent === "Finished";
    if (!done) status(`Stopped${e.reason ? ": " + e.reason : ""}`);
  };
}

function onMessage(msg) {
  if (msg.type === "ready") {
    sessionId = msg.session_id;
    if ("resume_from_s" in msg) { status("Listening… (resumed)"); return; }
    $("session").textContent = sessionId;
    document.body.dataset.session = sessionId;
    $("stop").disabled = false;
    $("share").disabled = false;
    $("download").disabled = false;
    status("Listening…");
  } else if (msg.type === "error") {
    status(`Error ${msg.code}: ${msg.message}`, true);
  } else {
    view.apply(msg);
    if (msg.type === "final") status("Finished");
  }
}

async function stop() {
  $("stop").disabled = true;
  if (stopCapture) { await stopCapture(); stopCapture = null; }
  ended = true;
  if (socket && socket.readyState === WebSocket.OPEN && socket.live) socket.send(encode({ type: "end" }));
  status("Finishing…");
}

async function share() {
  const response = await fetch(`/v1/streams/${sessionId}/viewer-tokens`, {
    method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" }, body: "{}",
  });
  const body = await response.json();
  if (!response.ok) { status(`Error ${body.error.code}: ${body.error.message}`, true); return; }
  $("viewer-link").value = new URL(body.viewer_path, location.href).href;
  $("viewer-link").hidden = false;
}

async function download() {
  // fetch with the header, not ?key= in a link, so the key stays out of URLs and access logs.
  const response = await fetch(`/v1/streams/${sessionId}/transcript.vtt`, { headers: authHeaders() });
  if (!response.ok) { status(`Download failed (${response.status})`, true); return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${sessionId}.vtt`;
  link.click();
  URL.revokeObjectURL(link.href);
}

$("start").onclick = start;
$("stop").onclick = stop;
$("share").onclick = share;
$("download").onclick = download;
$("refresh").onclick = refreshMicrophones;
refreshMicrophones();
