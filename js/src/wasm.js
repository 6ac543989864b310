// WebAssembly plumbing shared by the guest and the meta module: a memory cap written into the
// module's own memory section (a JS host cannot set limits on a memory the module defines itself,
// so the byte-identical guest gets a `maximum` there: memory.grow past it fails, the guest's
// allocator reports ERR_OOM), and compilation cached per (module, cap).

import { GuestError } from "./errors.js";

export const WASM_PAGE = 65536;
const MAX_PAGES = 65536; // wasm32: 4 GiB

/** @param {Uint8Array} b @param {number} at @returns {[number, number]} value, next offset */
function leb(b, at) {
  let v = 0, shift = 0;
  for (let i = 0; i < 5; i++) {
    if (at >= b.length) throw new GuestError("truncated wasm module (LEB128 past the end)");
    const byte = b[at++];
    v += (byte & 0x7f) * 2 ** shift;
    if (!(byte & 0x80)) return [v, at];
    shift += 7;
  }
  throw new GuestError("malformed wasm module (LEB128 longer than 5 bytes)");
}

/** @param {number} v */
function encodeLeb(v) {
  const out = [];
  do {
    let byte = v % 128;
    v = Math.floor(v / 128);
    if (v) byte |= 0x80;
    out.push(byte);
  } while (v);
  return out;
}

/**
 * The module's memory limits (pages): {min, max | null}; throws when it defines no memory.
 * @param {Uint8Array} bytes
 */
export function memoryLimits(bytes) {
  const s = findMemorySection(bytes);
  return { min: s.min, max: s.max };
}

/** @param {Uint8Array} bytes */
function findMemorySection(bytes) {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw new GuestError("not a wasm module (bad magic)");
  }
  let at = 8;
  while (at < bytes.length) {
    const id = bytes[at];
    const [size, body] = leb(bytes, at + 1);
    if (body + size > bytes.length) throw new GuestError("truncated wasm module (a section runs past the end)");
    if (id === 5) {
      let [count, p] = leb(bytes, body);
      if (count !== 1) throw new GuestError(`the module defines ${count} memories, expected 1`);
      const flags = bytes[p++];
      if (flags !== 0 && flags !== 1) throw new GuestError(`unsupported memory limits flags 0x${flags.toString(16)} (shared or 64-bit memory)`);
      let min, max = null;
      [min, p] = leb(bytes, p);
      if (flags === 1) [max, p] = leb(bytes, p);
      if (p !== body + size) throw new GuestError("malformed memory section");
      return { start: at, body, end: body + size, min, max };
    }
    at = body + size;
  }
  throw new GuestError("the module defines no linear memory (an imported memory is not supported)");
}

/**
 * A copy of `bytes` whose memory may grow to at most `maxBytes` (rounded down to pages).
 * @param {Uint8Array} bytes @param {number} maxBytes
 */
export function capMemory(bytes, maxBytes) {
  const s = findMemorySection(bytes);
  const pages = Math.min(MAX_PAGES, Math.floor(maxBytes / WASM_PAGE), s.max ?? MAX_PAGES);
  if (s.min > pages) {
    throw new GuestError(`the module's initial memory of ${(s.min * WASM_PAGE) / 2 ** 20} MiB does not fit the memory budget of ` +
      `${(maxBytes / 2 ** 20).toFixed(1)} MiB; raise --memory-budget`);
  }
  const body = [1, 1, ...encodeLeb(s.min), ...encodeLeb(pages)];
  const section = [5, ...encodeLeb(body.length), ...body];
  const out = new Uint8Array(bytes.length - (s.end - s.start) + section.length);
  out.set(bytes.subarray(0, s.start), 0);
  out.set(section, s.start);
  out.set(bytes.subarray(s.end), s.start + section.length);
  return out;
}

/** @type {WeakMap<Uint8Array, Map<number, Promise<WebAssembly.Module>>>} */
const compiled = new WeakMap();

/**
 * Compile `bytes` with its memory capped at `maxBytes`, once per (bytes object, cap).
 * @param {Uint8Array} bytes @param {number} maxBytes @param {string} what names the module in errors
 */
export function compileCapped(bytes, maxBytes, what) {
  let byCap = compiled.get(bytes);
  if (!byCap) compiled.set(bytes, (byCap = new Map()));
  let p = byCap.get(maxBytes);
  if (!p) {
    const capped = capMemory(bytes, maxBytes);
    p = WebAssembly.compile(capped).catch((e) => {
      byCap?.delete(maxBytes);
      throw new GuestError(`cannot compile ${what}: ${e instanceof Error ? e.message : e}`);
    });
    byCap.set(maxBytes, p);
  }
  return p;
}
