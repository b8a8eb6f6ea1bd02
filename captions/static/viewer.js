// The viewer page: follows one stream's captions read-only with a viewer token (Server-Sent Events).
import { CaptionView } from "./captions-view.js";

const params = new URLSearchParams(location.search);
const stream = params.get("stream");
const token = params.get("token");
const view = new CaptionView(document.getElementById("captions"));
const statusEl = document.getElementById("status");
document.getElementById("session").textContent = stream || "";

function status(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
}

const source = new EventSource(`/v1/streams/${encodeURIComponent(stream)}/events?token=${encodeURIComponent(token)}`);
source.onopen = () => status("Following live captions");
source.onmessage = (e) => {
  const msg = JSON.parse(e.data);
  if (msg.type === "error") {
    status(`Ended: ${msg.code}: ${msg.message}`, true);
    source.close();
  } else {
    view.apply(msg);
    // The stream is over: stop EventSource from reconnecting and replaying it.
    if (msg.type === "final") { status("The stream has ended"); source.close(); }
  }
};
source.onerror = () => {
  if (source.readyState === EventSource.CLOSED) status("Cannot follow this stream (expired or invalid link?)", true);
};
document.getElementById("download").onclick = () => {
  location.href = `/v1/streams/${encodeURIComponent(stream)}/transcript.vtt?token=${encodeURIComponent(token)}`;
};
