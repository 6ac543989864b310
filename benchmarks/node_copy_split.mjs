// A Node host decode token split into the model reads and the rest (issue 16's Node >= 0.9x target):
//   node benchmarks/node_copy_split.mjs pread   reads by fs.readSync at a position (as the host works)
//   node benchmarks/node_copy_split.mjs buf     the same reads served from a Buffer holding the whole
//                                               file (an experiment: the host does not work this way)
// The Python host's twin: python3 benchmarks/python_copy_split.py. Default model, 1 instance, 64 MiB.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
const model = path.join(os.homedir(), ".cache", "realm", "gemma-3-270m-q4_k_m.gguf");
const mode = process.argv[2] ?? "pread";
if (mode !== "pread" && mode !== "buf") throw new Error(`unknown mode ${mode}: pread or buf`);
const whole = mode === "buf" ? fs.readFileSync(model) : null;
const ino = fs.statSync(model).ino;
const orig = fs.readSync; let rt = 0, rn = 0; const isModel = new Map();
fs.readSync = function (fd, buf, o, len, pos) {
  const t = performance.now(); let n;
  if (!isModel.has(fd)) isModel.set(fd, fs.fstatSync(fd).ino === ino);
  if (whole && isModel.get(fd) && typeof pos === "number") { buf.set(whole.subarray(pos, pos + len), o); n = Math.min(len, whole.length - pos); }
  else n = orig.call(fs, fd, buf, o, len, pos);
  rt += performance.now() - t; rn += n; return n;
};
const { createEngine } = await import("../js/src/node.js");
const engine = await createEngine({ model });
engine.eval([2, 100, 200, 300]);
for (let i = 0; i < 8; i++) engine.eval([400 + i]);
const N = 32, ms = []; rt = 0; rn = 0;
for (let i = 0; i < N; i++) { const t = performance.now(); engine.eval([500 + i]); ms.push(performance.now() - t); }
ms.sort((a, b) => a - b);
console.log(`${mode}: token min ${ms[0].toFixed(1)} p50 ${ms[N >> 1].toFixed(1)} ms; reads ${(rt / N).toFixed(1)} ms/token, ${(rn / rt / 1e6).toFixed(1)} GB/s`);
