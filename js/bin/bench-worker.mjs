#!/usr/bin/env node
// The Node host's side of `python -m realm bench --engines ...,node` (realm/bench_node.py drives it).
// One JSON request per stdin line, one reply per request on stdout, prefixed with TAG:
//   {"op": "load", "model": PATH, "n_ctx": N, "memory_budget": BYTES}  -> load_seconds, instances, ...
//   {"op": "run", "ids": [...], "gen_tokens": N}   -> prefill_s, decode_s (timed here), counters per token
//   {"op": "logits", "ids": [...], "path": FILE}   -> every position's logits, raw little-endian f32 in FILE
// Failures are {"error": "..."} replies; the worker stays usable. It exits when stdin closes.

import fs from "node:fs";
import readline from "node:readline";
import { createEngine } from "../src/node.js";

const TAG = "REALM-NODE ";
const COUNTERS = ["bytes_fetched", "host_calls"];

/** @param {Float32Array} x */
function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** @param {Record<string, unknown>} obj */
function reply(obj) {
  process.stdout.write(TAG + JSON.stringify(obj) + "\n");
}

/** @type {import("../src/engine.js").Engine | null} */
let engine = null;

/** @param {any} msg */
async function handle(msg) {
  if (msg.op === "load") {
    const t0 = performance.now();
    engine = await createEngine({ model: msg.model, nCtx: msg.n_ctx, memoryBudget: msg.memory_budget });
    return { load_seconds: (performance.now() - t0) / 1000, instances: 1, node: process.version,
      memory_budget: engine.memoryBudget };
  }
  if (!engine) throw new Error(`${msg.op} before load`);
  if (msg.op === "run") {
    // like realm.bench.time_generation: prefill, then greedy single-token steps (argmax here)
    const ids = /** @type {number[]} */ (msg.ids);
    engine.reset();
    let t0 = performance.now();
    engine.eval(ids);
    const prefill = (performance.now() - t0) / 1000;
    let token = argmax(engine.logits());
    const before = engine.stats;
    const tokens = [];
    t0 = performance.now();
    for (let i = 0; i < msg.gen_tokens; i++) {
      engine.eval([token]);
      token = argmax(engine.logits());
      tokens.push(token);
    }
    const decode = (performance.now() - t0) / 1000;
    const after = engine.stats;
    /** @type {Record<string, number>} */
    const perToken = {};
    for (const k of COUNTERS) perToken[`${k}_per_token`] = (after[k] - before[k]) / msg.gen_tokens;
    return { prefill_s: prefill, decode_s: decode, per_token: perToken, tokens, peak_memory: after.peak_memory };
  }
  if (msg.op === "logits") {
    engine.reset();
    const all = engine.evalAll(msg.ids);
    fs.writeFileSync(msg.path, new Uint8Array(all.buffer, all.byteOffset, all.byteLength));
    return { shape: [msg.ids.length, engine.vocab] };
  }
  if (msg.op === "stats") return { stats: engine.stats };
  throw new Error(`unknown op ${JSON.stringify(msg.op)}`);
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    reply(await handle(JSON.parse(line)));
  } catch (e) {
    reply({ error: e instanceof Error ? e.message : String(e) });
  }
}
engine?.close();
