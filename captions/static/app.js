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

async function start() {
  const key = $("key").value.trim();
  localStorage.setItem("captions-key", key);
  $("start").disabled = true;
  sessionId = null;
  // Capture starts inside the click, so the AudioContext may run (autoplay policy);
  // frames wait in `queued` until the server says `ready`.
  const queued = [];
  try {
    stopCapture = await startCapture($("mic").value, (pcm) => {
      const frame = encode({ type: "audio", data: new Uint8Array(pcm.buffer) });
      if (sessionId && socket.readyState === WebSocket.OPEN) socket.send(frame);
      else if (queued.length < 50) queued.push(frame); // at most 5 s before the server answers
    });
  } catch (err) {
    status(`Cannot capture the microphone: ${err.message}`, true);
    $("start").disabled = false;
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // Browsers cannot set headers on WebSockets: the key travels as ?key=.
  socket = new WebSocket(`${scheme}://${location.host}/v1/stream?key=${encodeURIComponent(key)}`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    socket.send(encode({ type: "start", sample_rate: 16000, encoding: "pcm_s16le", language: $("language").value }));
  };
  socket.onmessage = (e) => {
    const msg = decode(e.data);
    if (msg.type === "ready") {
      for (const frame of queued.splice(0)) socket.send(frame);
    }
    onMessage(msg);
  };
  socket.onclose = async (e) => {
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
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(encode({ type: "end" }));
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
