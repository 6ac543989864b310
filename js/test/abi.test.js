// The shared hostile-call table (tests/data/abi_hostile_calls.json) against the JavaScript host's
// host functions; tests/unit/test_abi_hostile_table.py runs the same table against the Python host.
// Cases marked `needs: "meta"` (a judgement only the real GGUF reader can make) run over a store whose
// models are described by the real meta module; the rest use the meta double.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { ROOT, fixtures, metaDouble } from "../testing/helpers.js";
import { ERR, HOST_FUNCTIONS, Tenant, codeName, pack, unpack, STRUCTS } from "../src/abi.js";
import { ModelStore } from "../src/store.js";
import { nodePlatform } from "../src/platform/node.js";
import { MetaLoader } from "../src/meta.js";

const TABLE = JSON.parse(fs.readFileSync(path.join(ROOT, "tests", "data", "abi_hostile_calls.json"), "utf8"));
const fx = fixtures();
const info = fx.info;
const A = TABLE.addresses;

/** @param {(reader: any) => any} openMeta */
async function world(openMeta) {
  const store = new ModelStore({ openMeta });
  const held = await store.storeModel(await nodePlatform.openFile(fx.model));
  const foreign = await store.storeModel(await nodePlatform.openFile(fx.foreign));
  const memory = new WebAssembly.Memory({ initial: TABLE.memory_bytes / 65536 });
  const t = new Tenant(store, "guest-a", { log: () => {} });
  t.memory = memory;
  t.acquire(held);
  const other = new Tenant(store, "guest-b", { log: () => {} });
  other.acquire(foreign);
  return { store, held, foreign, memory, t, fns: t.functions() };
}

/** @param {any} expr @param {any} w @param {number} nameLen @returns {bigint} */
function resolve(expr, w, nameLen) {
  if (typeof expr === "number") return BigInt(expr);
  let total = 0n;
  for (const [, sign, term] of expr.matchAll(/([+-]?)([^+-]+)/g)) {
    const star = term.lastIndexOf("*");
    const k = star >= 0 ? BigInt(term.slice(0, star)) : 1n;
    const sym = term.slice(star + 1);
    /** @type {bigint} */
    let v;
    /** @type {RegExpExecArray | null} */
    let m;
    if (/^\d+$/.test(sym)) v = BigInt(sym);
    else if (sym === "HELD") v = w.held;
    else if (sym === "FOREIGN") v = w.foreign;
    else if (sym === "MEM") v = BigInt(TABLE.memory_bytes);
    else if (sym === "NAME_LEN") v = BigInt(nameLen);
    else if (sym === "NTENSORS") v = BigInt(info.tensors.length);
    else if ((m = /^NBYTES(\d+)$/.exec(sym))) v = BigInt(info.tensors[Number(m[1])].n_bytes);
    else if ((m = /^NELEMENTS\((.+)\)$/.exec(sym))) v = BigInt(info.tensors.find((/** @type {any} */ t) => t.name === m?.[1]).n_elements);
    else if (sym in A) v = BigInt(A[sym]);
    else throw new Error(`unknown symbol ${sym}`);
    total += sign === "-" ? -k * v : k * v;
  }
  return total;
}

const wDouble = await world(metaDouble(info));
const w = wDouble;
const realMeta = await new MetaLoader(await nodePlatform.loadWasm("meta")).ready();
const wMeta = await world((r) => realMeta.open(r));
const raw = fs.readFileSync(fx.model);

for (const c of TABLE.cases) {
  test(`hostile call: ${c.id}${c.needs === "meta" ? " (real meta module)" : ""}`, () => {
    const w = c.needs === "meta" ? wMeta : wDouble;
    const mem = new Uint8Array(w.memory.buffer);
    const name = c.name_hex ? Uint8Array.from(Buffer.from(c.name_hex.replace(/ /g, ""), "hex")) : new TextEncoder().encode(c.name ?? "");
    mem.set(name, A.NAME);
    if (c.reqs) {
      c.reqs.forEach((/** @type {any[]} */ r, /** @type {number} */ i) => {
        const [handle, out, offset, len, reserved] = r.map((v) => resolve(v, w, name.length));
        mem.set(pack("ReadReq", { handle, out_ptr: out, offset, len, reserved }), A.REQS + i * STRUCTS.ReadReq.size);
      });
    }
    const sig = HOST_FUNCTIONS[c.fn];
    const args = c.args.map((/** @type {any} */ a, /** @type {number} */ i) => {
      const v = resolve(a, w, name.length);
      return sig.params[i] === "i64" ? BigInt.asIntN(64, v) : Number(BigInt.asIntN(32, v));
    });
    const want = typeof c.expect === "string" && c.expect.startsWith("ERR_") ? ERR[c.expect] : Number(resolve(c.expect, w, name.length));
    const rc = Number(w.fns[c.fn](...args));
    assert.equal(rc, want, `${c.id}: got ${rc < 0 ? codeName(rc) : rc}, want ${c.expect}`);
    if (c.check_bytes) {
      const t = info.tensors[0];
      assert.deepEqual(Buffer.from(mem.subarray(A.BIG, A.BIG + t.n_bytes)), raw.subarray(t.data_offset, t.data_offset + t.n_bytes));
    }
    if (c.check_config) assert.equal(Buffer.from(mem.subarray(A.OUT, A.OUT + 128)).toString("hex"), info.config_hex);
    if (c.check_info) {
      const dv = new DataView(mem.buffer);
      assert.equal(dv.getUint32(A.OUT, true), info.tensors.length);
      assert.equal(Number(dv.getBigUint64(A.OUT + 8, true)), info.tensors.reduce((/** @type {number} */ s, /** @type {any} */ t) => s + t.n_bytes, 0));
    }
  });
}

test("tensor_info writes the Python host's TensorInfo for every tensor", () => {
  const mem = new Uint8Array(w.memory.buffer);
  info.tensors.forEach((/** @type {any} */ t, /** @type {number} */ i) => {
    const name = new TextEncoder().encode(t.name);
    mem.set(name, A.NAME);
    assert.equal(w.fns.realm_tensor_info(w.held, A.NAME, name.length, A.OUT), i);
    const got = unpack("TensorInfo", mem.subarray(A.OUT, A.OUT + 48));
    assert.equal(got.ggml_type, t.ggml_type);
    assert.equal(got.n_dims, t.ne.length);
    assert.deepEqual(got.ne.map(Number), [...t.ne, 1, 1, 1, 1].slice(0, 4));
    assert.equal(Number(got.n_bytes), t.n_bytes);
  });
});

test("a host function bug is ERR_INTERNAL, logged, never thrown into the guest", () => {
  /** @type {string[]} */
  const logged = [];
  const t = new Tenant(w.store, "guest-c", { log: (_l, text) => logged.push(text) });
  t.memory = w.memory;
  t.acquire(w.held);
  const entry = w.store.get(w.held);
  const orig = entry.readInto;
  entry.readInto = () => { throw new Error("disk on fire"); };
  try {
    assert.equal(t.functions().realm_read_tensor(w.held, 0, 0n, A.BIG, 16), ERR.ERR_INTERNAL);
  } finally {
    entry.readInto = orig;
  }
  assert.match(logged.join("\n"), /disk on fire/);
});

test("the log rate limit drops messages and says so", () => {
  /** @type {string[]} */
  const logged = [];
  const t = new Tenant(w.store, "guest-d", { log: (_l, text) => logged.push(text), logBurst: 3, logRate: 0 });
  t.memory = w.memory;
  const fns = t.functions();
  new Uint8Array(w.memory.buffer).set(new TextEncoder().encode("hi"), A.NAME);
  for (let i = 0; i < 10; i++) assert.equal(fns.realm_log(1, A.NAME, 2), 0);
  assert.equal(logged.length, 3);
  assert.equal(t.logDropped, 7);
});

test("the read quota is ERR_QUOTA", () => {
  w.store.setLimits("guest-q", { maxReadBytes: 100 });
  const t = new Tenant(w.store, "guest-q", { log: () => {} });
  t.memory = w.memory;
  t.acquire(w.held);
  const fns = t.functions();
  assert.equal(fns.realm_read_tensor(w.held, 0, 0n, A.BIG, 64), 64);
  assert.equal(fns.realm_read_tensor(w.held, 0, 0n, A.BIG, 64), ERR.ERR_QUOTA);
});

test("grown memory is seen by the next host call", () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 4 });
  const t = new Tenant(w.store, "guest-g", { log: () => {} });
  t.memory = memory;
  t.acquire(w.held);
  const fns = t.functions();
  assert.equal(fns.realm_read_tensor(w.held, 0, 0n, 65536, 16), ERR.ERR_BOUNDS);
  memory.grow(1);
  assert.equal(fns.realm_read_tensor(w.held, 0, 0n, 65536, 16), 16);
});
