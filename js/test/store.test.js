// The model store (src/store.js) over the fixture files, with the meta double (the Python description):
// content-hash ids equal realm/host/store.py's, one id never names two contents, the bridge's four
// operations, raw range reads, references and removal; and the Node platform's range reader.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fixtures, metaDouble } from "../testing/helpers.js";
import { ModelStore, MAX_ID, bytesReader, contentId, readerDigest } from "../src/store.js";
import { nodePlatform } from "../src/platform/node.js";
import { GGUFError, IdConflictError, ModelNotFoundError, NoModelError, QuotaError, StoreError } from "../src/errors.js";

const fx = fixtures();
const info = fx.info;
const raw = fs.readFileSync(fx.model);
const open = (/** @type {string} */ p) => nodePlatform.openFile(p);
const newStore = () => new ModelStore({ openMeta: metaDouble(info) });

test("the content id is the Python store's: first 8 bytes of the SHA-256, top bit cleared", async () => {
  const s = newStore();
  const id = await s.storeModel(await open(fx.model));
  assert.equal(id, BigInt(info.python_id));
  assert.equal(id, contentId(crypto.createHash("sha256").update(raw).digest()));
  // the same content from bytes in memory (hashed by the store's own SHA-256) is the same model
  assert.equal(await s.storeModel(new Uint8Array(raw)), id);
  assert.equal(s.entries.length, 1);
  assert.equal(contentId(new Uint8Array(8)), 1n, "id 0 is never used");
  assert.equal(contentId(new Uint8Array(8).fill(0xff)), MAX_ID);
  s.close();
});

test("the store's SHA-256 equals node:crypto's across block boundaries", async () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 1000, (4 << 20) + 3]) {
    const bytes = crypto.randomBytes(n);
    const want = crypto.createHash("sha256").update(bytes).digest("hex");
    assert.equal(Buffer.from(await readerDigest(bytesReader(new Uint8Array(bytes)))).toString("hex"), want, `${n} bytes`);
  }
});

test("a chosen id: kept, shared by the same content, a collision with other content is an error", async () => {
  const s = newStore();
  assert.equal(await s.storeModel(await open(fx.model), { id: 5n }), 5n);
  await assert.rejects(s.storeModel(await open(fx.foreign), { id: 5n }), IdConflictError);
  assert.equal(await s.storeModel(await open(fx.model), { id: 9n }), 9n, "a second id for the same content");
  assert.equal(s.entries.length, 1);
  assert.equal(s.get(5n), s.get(9n));
  const other = await s.storeModel(await open(fx.foreign));
  assert.notEqual(other, 5n);
  assert.equal(s.entries.length, 2);
  for (const bad of [0n, -1n, MAX_ID + 1n, 5, "5"]) {
    await assert.rejects(s.storeModel(await open(fx.model), { id: /** @type {any} */ (bad) }), StoreError, String(bad));
  }
  s.close();
});

test("getModelInfo describes the model as realm.gguf does", async () => {
  const s = newStore();
  const id = await s.storeModel(await open(fx.model));
  const m = s.getModelInfo(id);
  assert.equal(m.id, id);
  assert.equal(m.size, raw.length);
  assert.equal(m.architecture, info.strings["general.architecture"]);
  assert.equal(m.name, info.strings["general.name"]);
  assert.equal(m.tensorCount, info.tensors.length);
  assert.equal(m.totalSize, info.tensors.reduce((/** @type {number} */ a, /** @type {any} */ t) => a + t.n_bytes, 0));
  assert.deepEqual(m.tensors.map((t) => t.name), info.tensors.map((/** @type {any} */ t) => t.name));
  assert.throws(() => s.getModelInfo(4660n), NoModelError);
  s.close();
});

test("getTensor dequantizes to gguf-py's values; unknown names are errors", async () => {
  const s = newStore();
  const id = await s.storeModel(await open(fx.model));
  const name = "output_norm.weight"; // F32: the double's dequantizer (the meta module's is tested in meta.test.js)
  assert.deepEqual(Array.from(s.getTensor(id, name)), info.dequantized[name]);
  assert.throws(() => s.getTensor(id, "no.such.tensor"), /no tensor "no.such.tensor"/);
  assert.throws(() => s.getTensor(4660n, name), NoModelError);
  s.close();
});

test("raw range reads return the file's bytes and refuse ranges outside the tensor", async () => {
  const s = newStore();
  const id = await s.storeModel(await open(fx.model));
  for (const t of info.tensors) {
    for (const [off, len] of [[0, t.n_bytes], [1, 7], [t.n_bytes - 3, 3], [t.n_bytes, 0]]) {
      const dst = new Uint8Array(len);
      s.readTensor(id, t.name, off, dst);
      assert.deepEqual(Buffer.from(dst), raw.subarray(t.data_offset + off, t.data_offset + off + len), `${t.name} [${off}, +${len})`);
    }
    assert.throws(() => s.readTensor(id, t.name, t.n_bytes - 3, new Uint8Array(4)), /outside/);
    assert.throws(() => s.readTensor(id, t.name, -1, new Uint8Array(1)), /outside/);
  }
  const before = s.get(id).bytesServed;
  s.readTensor(id, info.tensors[0].name, 0, new Uint8Array(10));
  assert.equal(s.get(id).bytesServed, before + 10, "bytes served are counted");
  s.close();
});

test("removeModel: freed at once when nobody holds it, else with its last holder", async () => {
  const s = newStore();
  const a = await s.storeModel(await open(fx.model));
  s.removeModel(a);
  assert.throws(() => s.getModelInfo(a), NoModelError);
  assert.equal(s.entries.length, 0);
  assert.throws(() => s.removeModel(a), NoModelError);

  const b = await s.storeModel(await open(fx.model));
  assert.equal(b, a, "stored again: the same content id");
  s.acquire(b, "guest-1");
  s.removeModel(b);
  assert.equal(s.getModelInfo(b).holders, 1, "a holder keeps a removed model readable");
  assert.throws(() => s.acquire(b, "guest-2"), /removed/);
  s.release(b, "guest-1");
  assert.throws(() => s.getModelInfo(b), NoModelError);
  assert.throws(() => s.release(b, "guest-1"), NoModelError);

  // an unpinned model lives as long as its holders
  const c = await s.storeModel(await open(fx.model), { holder: "guest-3", pin: false });
  s.acquire(c, "guest-3");
  s.release(c, "guest-3");
  assert.equal(s.entries.length, 1);
  s.release(c, "guest-3");
  assert.equal(s.entries.length, 0);
  await assert.rejects(s.storeModel(await open(fx.model), { pin: false }), /needs a holder/);
});

test("a holder's model-count limit is a QuotaError; a bad file is a GGUFError and stores nothing", async () => {
  const s = newStore();
  s.setLimits("guest-q", { maxModels: 1 });
  await s.storeModel(await open(fx.model), { holder: "guest-q" });
  await assert.rejects(s.storeModel(await open(fx.foreign), { holder: "guest-q" }), QuotaError);
  const n = s.entries.length;
  await assert.rejects(s.storeModel(new TextEncoder().encode("not a model")), GGUFError);
  assert.equal(s.entries.length, n);
  s.close();
});

test("the Node reader reads byte ranges (short only at EOF) and names a missing file", async () => {
  const r = await open(fx.model);
  try {
    assert.equal(r.size, raw.length);
    const dst = new Uint8Array(100);
    assert.equal(r.read(1000, dst), 100);
    assert.deepEqual(Buffer.from(dst), raw.subarray(1000, 1100));
    assert.equal(r.read(raw.length - 10, dst), 10);
    assert.equal(r.read(raw.length, dst), 0);
    assert.equal(Buffer.from(await /** @type {any} */ (r).digest()).toString("hex"), crypto.createHash("sha256").update(raw).digest("hex"));
  } finally {
    r.close?.();
  }
  await assert.rejects(open(path.join(fx.dir, "missing.gguf")), (e) => e instanceof ModelNotFoundError && /not found/.test(e.message));
  await assert.rejects(open(fx.dir), (e) => e instanceof ModelNotFoundError && /directory/.test(e.message));
});
