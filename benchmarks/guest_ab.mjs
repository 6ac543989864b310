// Two guest builds side by side in one Node host process (the twin of benchmarks/guest_ab.py):
//   node [--no-liftoff] benchmarks/guest_ab.mjs OLD.wasm NEW.wasm [TOKENS]
// Decode tokens alternate between them; prints each build's fastest and median time per token and
// the median of NEW/OLD over token pairs. Default model, one instance, 64 MiB. Pass --no-liftoff:
// with V8's default tiering the two modules in one process tier up unevenly and the ratio is erratic.
import fs from "node:fs";
import { createEngine } from "../js/src/node.js";
import { nodePlatform } from "../js/src/platform/node.js";

const [oldPath, newPath, tokens] = process.argv.slice(2);
if (!oldPath || !newPath) {
  console.error("usage: node benchmarks/guest_ab.mjs OLD.wasm NEW.wasm [TOKENS]");
  process.exit(2);
}
const N = Number(tokens ?? 64);
const withGuest = (file) => ({
  ...nodePlatform,
  loadWasm: async (name) => (name === "guest" ? new Uint8Array(fs.readFileSync(file)) : nodePlatform.loadWasm(name)),
});
const engines = [await createEngine({ platform: withGuest(oldPath) }), await createEngine({ platform: withGuest(newPath) })];
for (const e of engines) {
  e.eval([2, 100, 200, 300]);
  for (let i = 0; i < 8; i++) e.eval([400 + i]);
}
const times = [[], []];
for (let i = 0; i < N; i++) {
  for (const k of i % 2 ? [0, 1] : [1, 0]) {
    const t = performance.now();
    engines[k].eval([500 + (i % 64)]);
    times[k].push(performance.now() - t);
  }
}
const med = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const ratio = times[0].map((a, i) => times[1][i] / a);
console.log(`node host: old min ${Math.min(...times[0]).toFixed(2)} ms p50 ${med(times[0]).toFixed(2)} | new min ` +
  `${Math.min(...times[1]).toFixed(2)} p50 ${med(times[1]).toFixed(2)} | new/old time per token, median ${med(ratio).toFixed(3)}`);
for (const e of engines) e.close?.();
