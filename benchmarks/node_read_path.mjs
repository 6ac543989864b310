// What the Node host's model reads cost, beside its decode (issue 16's Node >= 0.9x target).
//   node benchmarks/node_read_path.mjs micro [MODEL]   pread into a wasm memory at several chunk sizes,
//                                                      and copies from a resident Buffer, in GB/s
//   node benchmarks/node_read_path.mjs align [MODEL]   pread at 1 MiB with the destination 0..48 bytes off
//                                                      the file offset's alignment, in GB/s
//   node benchmarks/node_read_path.mjs pread [MODEL]   1-instance decode, 64 MiB guest, reads by pread; the
//                                                      time per token and the part of it spent in reads
//   node benchmarks/node_read_path.mjs buf [MODEL]     the same decode with the model's reads served
//                                                      from a Buffer holding the whole file (an experiment:
//                                                      the host does not work this way)
//   The Python host's figure, with its copies timed the same way: python3 benchmarks/python_host_decode.py
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createEngine } from "../js/src/node.js";

const mode = process.argv[2] ?? "pread";
const model = process.argv[3] ?? path.join(os.homedir(), ".cache", "realm", "gemma-3-270m-q4_k_m.gguf");

if (mode === "align") {
  const fd = fs.openSync(model, "r");
  const size = fs.fstatSync(fd).size;
  const view = new Uint8Array(new WebAssembly.Memory({ initial: 1024, maximum: 1024 }).buffer);
  const chunk = 1 << 20, n = Math.floor((size - 4096) / chunk) * chunk;
  for (const d of [0, 1, 8, 16, 32, 48, 64]) {
    let b = Infinity;
    for (let r = 0; r < 3; r++) {
      const t = process.hrtime.bigint();
      for (let off = 0; off < n; off += chunk) fs.readSync(fd, view, d, chunk, off);
      b = Math.min(b, Number(process.hrtime.bigint() - t) / 1e9);
    }
    console.log(`pread 1 MiB, destination ${d} bytes past the source's alignment: ${(n / b / 1e9).toFixed(2)} GB/s`);
  }
} else if (mode === "micro") {
  const fd = fs.openSync(model, "r");
  const size = fs.fstatSync(fd).size;
  const view = new Uint8Array(new WebAssembly.Memory({ initial: 1024, maximum: 1024 }).buffer);
  const best = (fn) => { let b = Infinity; for (let r = 0; r < 4; r++) { const t = process.hrtime.bigint(); fn(); b = Math.min(b, Number(process.hrtime.bigint() - t) / 1e9); } return b; };
  for (const chunk of [64 << 10, 256 << 10, 1 << 20, 4 << 20]) {
    const n = Math.floor(size / chunk) * chunk;
    const s = best(() => { for (let off = 0; off < n; off += chunk) fs.readSync(fd, view, 0, chunk, off); });
    console.log(`pread, ${chunk >> 10} KiB reads: ${(n / s / 1e9).toFixed(2)} GB/s`);
  }
  const whole = Buffer.allocUnsafe(size);
  fs.readSync(fd, whole, 0, size, 0);
  const chunk = 1 << 20, n = Math.floor(size / chunk) * chunk;
  const s = best(() => { for (let off = 0; off < n; off += chunk) view.set(whole.subarray(off, off + chunk)); });
  console.log(`copy from a resident Buffer, 1024 KiB: ${(n / s / 1e9).toFixed(2)} GB/s`);
} else {
  if (mode === "buf") {
    const whole = fs.readFileSync(model);
    const fdOf = fs.openSync(model, "r");
    const ino = fs.fstatSync(fdOf).ino;
    fs.closeSync(fdOf);
    const orig = fs.readSync;
    const isModel = new Map();
    fs.readSync = function (fd, buf, o, len, pos) {
      if (!isModel.has(fd)) isModel.set(fd, fs.fstatSync(fd).ino === ino);
      if (isModel.get(fd) && typeof pos === "number") { buf.set(whole.subarray(pos, pos + len), o); return Math.min(len, whole.length - pos); }
      return orig.call(fs, fd, buf, o, len, pos);
    };
  } else if (mode !== "pread") throw new Error(`unknown mode ${mode}`);
  // time every read (the whole-file hash at store time included until the counters are reset)
  const read = fs.readSync;
  let readMs = 0, readBytes = 0;
  fs.readSync = function (...args) {
    const t = performance.now();
    const n = read.apply(fs, args);
    readMs += performance.now() - t;
    readBytes += n;
    return n;
  };
  const engine = await createEngine({ model });
  engine.eval([2, 100, 200, 300]);
  for (let r = 0; r < 3; r++) {
    const N = 16, t0 = performance.now();
    readMs = 0; readBytes = 0;
    for (let i = 0; i < N; i++) engine.eval([400 + 16 * r + i]);
    const ms = (performance.now() - t0) / N;
    console.log(`node host (${mode}) decode ${(1000 / ms).toFixed(2)} tok/s: ${ms.toFixed(1)} ms per token, of which reads ` +
      `${(readMs / N).toFixed(1)} ms (${(readBytes / N / 1e6).toFixed(1)} MB at ${(readBytes / readMs / 1e6).toFixed(1)} GB/s)`);
  }
  engine.close?.();
}
