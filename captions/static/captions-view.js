// Renders committed words and the tentative tail of one stream into an element.
// A `words` frame with `utterance_end` (or a stored word with it, as the viewer's replay from the
// database sends them) closes a caption line: the next word starts a new one.

export class CaptionView {
  constructor(element) {
    this.committed = element.querySelector(".committed");
    this.tentative = element.querySelector(".tentative");
    this.count = 0;
    this.lineOpen = false;
  }

  apply(msg) {
    if (msg.type === "words") {
      for (const w of msg.words) {
        if (this.count && !this.lineOpen) {
          const br = document.createElement("br");
          br.className = "utterance-break";
          this.committed.append(br);
        }
        const span = document.createElement("span");
        span.className = "word";
        span.textContent = (this.lineOpen ? " " : "") + w.text;
        span.title = `${w.start.toFixed(2)}–${w.end.toFixed(2)} s`;
        this.committed.append(span);
        this.count += 1;
        this.lineOpen = !w.utterance_end;
      }
      if (msg.utterance_end) this.lineOpen = false;
      this.tentative.textContent = "";
    } else if (msg.type === "partial") {
      this.tentative.textContent = msg.text ? " " + msg.text : "";
    } else if (msg.type === "final") {
      this.tentative.textContent = "";
    }
    this.committed.parentElement.scrollTop = this.committed.parentElement.scrollHeight;
  }

  get words() { return this.count; }
}
