// Microphone capture: an AudioWorklet tap, downsampling to 16 kHz, int16 frames.

export const TARGET_RATE = 16000;
const FRAME_SAMPLES = TARGET_RATE / 10; // send 100 ms per `audio` message

// Box-filter decimator: each output sample averages the input samples of its
// 1/16000 s slot, a cheap low-pass against aliasing that keeps speech intelligible.
export class Downsampler {
  constructor(inputRate) {
    this.step = inputRate / TARGET_RATE;
    this.pos = 0; // position of the next output slot's start, in input samples, relative to `carry`
    this.carry = new Float32Array(0);
  }

  push(input) {
    const data = new Float32Array(this.carry.length + input.length);
    data.set(this.carry);
    data.set(input, this.carry.length);
    const out = [];
    let start = this.pos;
    while (start + this.step <= data.length) {
      const a = Math.floor(start), b = Math.max(a + 1, Math.floor(start + this.step));
      let sum = 0;
      for (let i = a; i < b; i++) sum += data[i];
      out.push(sum / (b - a));
      start += this.step;
    }
    const keep = Math.floor(start);
    this.carry = data.slice(keep);
    this.pos = start - keep;
    return Float32Array.from(out);
  }
}

export function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out;
}

export async function listMicrophones() {
  // Device labels are only visible once the page may use a microphone.
  const probe = await navigator.mediaDevices.getUserMedia({ audio: true });
  probe.getTracks().forEach((t) => t.stop());
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === "audioinput");
}

// Starts capturing `deviceId`; calls onFrame(Int16Array of 100 ms at 16 kHz). Returns stop().
export async function startCapture(deviceId, onFrame) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      deviceId: deviceId ? { exact: deviceId } : undefined,
      channelCount: 1,
      echoCancellation: false, // processing meant for calls distorts speech for recognition
      noiseSuppression: false,
      autoGainControl: false,
    },
  });
  const context = new AudioContext();
  await context.resume();
  await context.audioWorklet.addModule(new URL("pcm-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const tap = new AudioWorkletNode(context, "pcm-tap");
  const down = new Downsampler(context.sampleRate);
  let pending = new Float32Array(0);
  tap.port.onmessage = (e) => {
    const fresh = down.push(e.data);
    const all = new Float32Array(pending.length + fresh.length);
    all.set(pending);
    all.set(fresh, pending.length);
    let offset = 0;
    for (; offset + FRAME_SAMPLES <= all.length; offset += FRAME_SAMPLES) {
      onFrame(toInt16(all.subarray(offset, offset + FRAME_SAMPLES)));
    }
    pending = all.slice(offset);
  };
  source.connect(tap);
  // Keep the graph pulled without playing the microphone back.
  const mute = context.createGain();
  mute.gain.value = 0;
  tap.connect(mute).connect(context.destination);
  return async () => {
    stream.getTracks().forEach((t) => t.stop());
    tap.port.onmessage = null;
    if (pending.length) onFrame(toInt16(pending));
    await context.close();
  };
}
