// The guest driver on the real guest (realm/guest/realm_guest.wasm) over the tiny fixture model, with the
// meta double (the Python description) standing in for the meta module: greedy tokens equal the Python
// wasm host's, the memory cap holds, deadlines and cancels stop a call, errors name what failed.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { fixtures, metaDouble } from "../testing/helpers.js";
import { createEngine, MAX_BATCH } from "../src/engine.js";
import { ModelStore } from "../src/store.js";
import { nodePlatform, WASM_PATHS } from "../src/platform/node.js";
import { capMemory, memoryLimits } from "../src/wasm.js";
import { GuestError, InterruptError, RealmError } from "../src/errors.js";
import { ERR } from "../src/abi.js";

const fx = fixtures();
const store = new ModelStore({ openMeta: metaDouble(fx.info) });

/** @param {any} [o] */
const engine = (o = {}) => createEngine({ model: fx.model, platform: nodePlatform, store, ...o });

/** greedy like realm.generate.greedy: argmax after each eval, via the guest's sampler at temperature 0
 * @param {import("../src/engine.js").Engine} e @param {number[]} ids @param {number} n */
function greedy(e, ids, n) {
  e.reset();
  e.eval(ids);
  const out = [];
  for (let i = 0; i < n; i++) {
    const [t] = e.sample({ temperature: 0, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1, repeatLastN: 64, seed: 0n }, 0n);
    out.push(t);
    e.eval([t]);
  }
  return out;
}

test("greedy tokens equal the Python wasm host's on the tiny llama model", async () => {
  const e = await engine();
  try {
    assert.deepEqual(greedy(e, fx.info.prompt_ids, fx.info.python_greedy.length), fx.info.python_greedy);
    // and the sampled token is the argmax of the logits read back
    e.reset();
    e.eval(fx.info.prompt_ids);
    const logits = e.logits();
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    assert.equal(best, fx.info.python_greedy[0]);
    const s = e.stats;
    assert.ok(s.bytes_fetched > 0 && s.peak_memory <= 64 << 20, JSON.stringify(s));
  } finally {
    e.close();
  }
});

test("a prompt longer than one batch is evaluated in chunks, same result", async () => {
  const e = await engine();
  try {
    const ids = Array.from({ length: MAX_BATCH + 9 }, (_, i) => (i * 37 + 3) % 300);
    e.eval(ids);
    const a = e.logits();
    e.reset();
    e.eval(ids.slice(0, 10));
    e.eval(ids.slice(10));
    const b = e.logits();
    assert.deepEqual(Array.from(a), Array.from(b));
    assert.equal(e.nPast, ids.length);
  } finally {
    e.close();
  }
});

test("bad tokens, context overflow and a tiny budget are clear errors", async () => {
  const e = await engine({ nCtx: 16 });
  try {
    assert.throws(() => e.eval([300]), (err) => err instanceof GuestError && err.code === ERR.ERR_BAD_TOKEN);
    assert.throws(() => e.eval(Array(17).fill(1)), (err) => err instanceof GuestError && err.code === ERR.ERR_CONTEXT_FULL);
    e.eval([1, 2]); // still usable
  } finally {
    e.close();
  }
  const { min } = memoryLimits(fs.readFileSync(WASM_PATHS.guest));
  await assert.rejects(engine({ memoryBudget: (min - 1) * 65536 }), /does not fit the memory budget/);
  await assert.rejects(engine({ memoryBudget: (min + 2) * 65536, nCtx: 256 }), /memory budget .* too small|ERR_OOM/);
});

test("the memory cap is written into the module: growth past it fails", () => {
  const bytes = fs.readFileSync(WASM_PATHS.guest);
  const { min, max } = memoryLimits(bytes);
  assert.equal(max, null, "the shipped guest declares no maximum; the host sets one");
  const capped = capMemory(bytes, (min + 3) * 65536);
  assert.deepEqual(memoryLimits(capped), { min, max: min + 3 });
  const mem = new WebAssembly.Memory({ initial: 1, maximum: 2 });
  assert.equal(mem.grow(1), 1);
  assert.throws(() => mem.grow(1));
});

test("a call past its deadline is stopped at its next host call and the guest is unusable after", async () => {
  const e = await engine();
  e.guest.timeout = 0;
  try {
    assert.throws(() => e.eval([1, 2, 3]), (err) => err instanceof InterruptError && /deadline/.test(err.message));
    assert.throws(() => e.eval([1]), /unusable after an earlier failure/);
  } finally {
    e.close();
  }
  const c = await engine();
  try {
    c.cancel();
    assert.throws(() => c.eval([1, 2, 3]), (err) => err instanceof InterruptError && /cancelled/.test(err.message));
  } finally {
    c.close();
  }
});

test("closing an engine releases its reference; the store frees an unpinned model with its last holder", async () => {
  const s = new ModelStore({ openMeta: metaDouble(fx.info) });
  const a = await createEngine({ model: fx.model, platform: nodePlatform, store: s });
  const b = await createEngine({ model: fx.model, platform: nodePlatform, store: s });
  assert.equal(a.modelId, b.modelId);
  assert.equal(s.entries.length, 1, "the same content is stored once");
  assert.equal(s.get(a.modelId).holders.size, 2);
  a.close();
  assert.equal(s.get(b.modelId).holders.size, 1);
  b.close();
  assert.equal(s.entries.length, 0);
});

test("sampling parameters are validated like realm.sampling", async () => {
  const e = await engine();
  try {
    assert.throws(() => e.generate({ ids: [1] }, { temperature: -1 }), RealmError);
    assert.throws(() => e.generate({ ids: [1] }, { topP: 0 }), /top_p/);
    assert.throws(() => e.generate({ ids: [1] }, { seed: -1n }), /seed/);
    assert.throws(() => e.generate({ ids: [] }), /empty/);
    assert.throws(() => e.generate({ ids: [1] }, { stop: [""] }), /stop strings/);
  } finally {
    e.close();
  }
});
