// Renders committed words and the tentative tail of one stream into an element.

export class CaptionView {
  constructor(element) {
    this.committed = element.querySelector(".committed");
    this.tentative = element.querySelector(".tentative");
    this.count = 0;
  }

  apply(msg) {
    if (msg.type === "words") {
      for (const w of msg.words) {
        const span = document.createElement("span");
        span.className = "word";
        span.textContent = (this.count ? " " : "") + w.text;
        span.title = `${w.start.toFixed(2)}–${w.end.toFixed(2)} s`;
        this.committed.append(span);
        this.count += 1;
      }
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
