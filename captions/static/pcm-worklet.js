// Runs on the audio thread: hands each block of microphone samples (mono,
// the context's sample rate) to the page, which resamples and sends them.
class PcmTap extends AudioWorkletProcessor {
  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      // Mix down to mono; copy, because the engine reuses its buffers.
      const mono = new Float32Array(channels[0].length);
      for (const ch of channels) for (let i = 0; i < mono.length; i++) mono[i] += ch[i] / channels.length;
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}
registerProcessor("pcm-tap", PcmTap);
