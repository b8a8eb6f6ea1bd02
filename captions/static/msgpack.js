// A small MessagePack encoder/decoder: the subset the /v1/stream protocol uses
// (maps, arrays, strings, binary, numbers, booleans, nil). No dependencies.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

export function encode(value) {
  const out = [];
  write(value, out);
  let size = 0;
  for (const part of out) size += part.length;
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const part of out) { bytes.set(part, offset); offset += part.length; }
  return bytes;
}

function header(tag, length, width) {
  const b = new Uint8Array(1 + width);
  const view = new DataView(b.buffer);
  b[0] = tag;
  if (width === 1) view.setUint8(1, length);
  else if (width === 2) view.setUint16(1, length);
  else if (width === 4) view.setUint32(1, length);
  return b;
}

function write(value, out) {
  if (value === null || value === undefined) out.push(Uint8Array.of(0xc0));
  else if (value === true) out.push(Uint8Array.of(0xc3));
  else if (value === false) out.push(Uint8Array.of(0xc2));
  else if (typeof value === "number") writeNumber(value, out);
  else if (typeof value === "string") {
    const b = utf8.encode(value);
    if (b.length < 32) out.push(Uint8Array.of(0xa0 | b.length));
    else if (b.length < 0x100) out.push(header(0xd9, b.length, 1));
    else if (b.length < 0x10000) out.push(header(0xda, b.length, 2));
    else out.push(header(0xdb, b.length, 4));
    out.push(b);
  } else if (value instanceof Uint8Array || value instanceof ArrayBuffer) {
    const b = value instanceof ArrayBuffer ? new Uint8Array(value) : value;
    if (b.length < 0x100) out.push(header(0xc4, b.length, 1));
    else if (b.length < 0x10000) out.push(header(0xc5, b.length, 2));
    else out.push(header(0xc6, b.length, 4));
    out.push(b);
  } else if (Array.isArray(value)) {
    if (value.length < 16) out.push(Uint8Array.of(0x90 | value.length));
    else if (value.length < 0x10000) out.push(header(0xdc, value.length, 2));
    else out.push(header(0xdd, value.length, 4));
    for (const item of value) write(item, out);
  } else if (typeof value === "object") {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined);
    if (keys.length < 16) out.push(Uint8Array.of(0x80 | keys.length));
    else if (keys.length < 0x10000) out.push(header(0xde, keys.length, 2));
    else out.push(header(0xdf, keys.length, 4));
    for (const k of keys) { write(k, out); write(value[k], out); }
  } else {
    throw new TypeError(`msgpack: cannot encode ${typeof value}`);
  }
}

function writeNumber(n, out) {
  if (Number.isInteger(n) && n >= 0 && n < 0x80) out.push(Uint8Array.of(n));
  else if (Number.isInteger(n) && n < 0 && n >= -32) out.push(Uint8Array.of(n & 0xff));
  else if (Number.isInteger(n) && n >= 0 && n <= 0xffffffff) out.push(header(0xce, n, 4));
  else if (Number.isInteger(n) && n < 0 && n >= -0x80000000) {
    const b = new Uint8Array(5);
    b[0] = 0xd2;
    new DataView(b.buffer).setInt32(1, n);
    out.push(b);
  } else {
    const b = new Uint8Array(9);
    b[0] = 0xcb;
    new DataView(b.buffer).setFloat64(1, n);
    out.push(b);
  }
}

export function decode(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;

  function str(n) { const s = fromUtf8.decode(bytes.subarray(pos, pos + n)); pos += n; return s; }
  function bin(n) { const b = bytes.slice(pos, pos + n); pos += n; return b; }
  function arr(n) { const a = []; for (let i = 0; i < n; i++) a.push(read()); return a; }
  function map(n) { const m = {}; for (let i = 0; i < n; i++) { const k = read(); m[k] = read(); } return m; }
  function u8() { return view.getUint8(pos++); }
  function u16() { const v = view.getUint16(pos); pos += 2; return v; }
  function u32() { const v = view.getUint32(pos); pos += 4; return v; }

  function read() {
    if (pos >= bytes.length) throw new RangeError("msgpack: truncated data");
    const t = u8();
    if (t < 0x80) return t;
    if (t < 0x90) return map(t & 0x0f);
    if (t < 0xa0) return arr(t & 0x0f);
    if (t < 0xc0) return str(t & 0x1f);
    if (t >= 0xe0) return t - 0x100;
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(u8());
      case 0xc5: return bin(u16());
      case 0xc6: return bin(u32());
      case 0xca: { const v = view.getFloat32(pos); pos += 4; return v; }
      case 0xcb: { const v = view.getFloat64(pos); pos += 8; return v; }
      case 0xcc: return u8();
      case 0xcd: return u16();
      case 0xce: return u32();
      case 0xcf: { const v = Number(view.getBigUint64(pos)); pos += 8; return v; }
      case 0xd0: { const v = view.getInt8(pos); pos += 1; return v; }
      case 0xd1: { const v = view.getInt16(pos); pos += 2; return v; }
      case 0xd2: { const v = view.getInt32(pos); pos += 4; return v; }
      case 0xd3: { const v = Number(view.getBigInt64(pos)); pos += 8; return v; }
      case 0xd9: return str(u8());
      case 0xda: return str(u16());
      case 0xdb: return str(u32());
      case 0xdc: return arr(u16());
      case 0xdd: return arr(u32());
      case 0xde: return map(u16());
      case 0xdf: return map(u32());
      default: throw new RangeError(`msgpack: unsupported type byte 0x${t.toString(16)}`);
    }
  }
  return read();
}
