// The real meta module (realm/guest/realm_meta.wasm) as the JavaScript host drives it (src/meta.js), against
// the Python oracle's description of the fixture model (tests/js_fixtures.py: realm.gguf, realm.config,
// realm.tokenizer, gguf-py) and, when $REALM_VOCAB_DIR names llama.cpp's vocab folder, llama.cpp's
// tokenizer vectors. Bad files are one clear error.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fixtures } from "../testing/helpers.js";
import { MetaLoader } from "../src/meta.js";
import { ModelStore, bytesReader } from "../src/store.js";
import { createEngine } from "../src/engine.js";
import { nodePlatform } from "../src/platform/node.js";
import { GGUFError } from "../src/errors.js";

const fx = fixtures();
const info = fx.info;
const raw = fs.readFileSync(fx.model);
const loader = await new MetaLoader(await nodePlatform.loadWasm("meta")).ready();
const openMeta = (/** @type {any} */ r) => loader.open(r);
const model = await loader.open(await nodePlatform.openFile(fx.model));

test("the tensor table, config bytes and strings are realm.gguf's and realm.config's", () => {
  assert.deepEqual(model.tensors, info.tensors);
  assert.equal(Buffer.from(/** @type {Uint8Array} */ (model.config)).toString("hex"), info.config_hex);
  for (const [k, v] of Object.entries(info.strings)) assert.equal(model.getString(k), v, k);
  assert.equal(model.getString("no.such.key"), null);
});

test("getTensor through the real meta module equals gguf-py's dequantization (F32 and Q8_0)", async () => {
  const s = new ModelStore({ openMeta });
  const id = await s.storeModel(await nodePlatform.openFile(fx.model));
  for (const [name, want] of Object.entries(info.dequantized)) {
    assert.deepEqual(Array.from(s.getTensor(id, name)), want, name);
  }
  s.close();
});

test("tokenize / detokenize / stream decode equal realm.tokenizer on the fixture vocabulary", () => {
  model.initTokenizer();
  assert.deepEqual([...(/** @type {Set<number>} */ (model.stopIds))].sort((a, b) => a - b), info.tokenizer.stop_ids);
  for (const c of info.tokenizer.cases) {
    assert.deepEqual(model.tokenize(c.text), c.ids, JSON.stringify(c.text));
    assert.deepEqual(model.tokenize(c.text, { addBos: false }), c.ids_no_bos, JSON.stringify(c.text));
    assert.deepEqual(model.tokenize(c.text, { special: true }), c.ids_special, JSON.stringify(c.text));
    assert.equal(model.detokenize(c.ids), c.decoded, JSON.stringify(c.text));
    model.streamReset();
    const streamed = c.ids.map((/** @type {number} */ t) => model.streamFeed(t)).join("") + model.streamFlush();
    assert.equal(streamed, c.decoded, `stream ${JSON.stringify(c.text)}`);
  }
});

test("not a GGUF, a truncated GGUF and an empty file are GGUFErrors naming the problem", async () => {
  const bad = {
    "not a GGUF": new TextEncoder().encode("GGUF this is not a model at all, just text"),
    truncated: new Uint8Array(raw.subarray(0, Math.floor(raw.length / 3))),
    "header only": new Uint8Array(raw.subarray(0, 24)),
    empty: new Uint8Array(0),
  };
  for (const [what, bytes] of Object.entries(bad)) {
    assert.throws(() => loader.open(bytesReader(bytes, what)), (e) => e instanceof GGUFError && e.message.length > 10, what);
  }
  // and the engine says so too, without a guest left running
  const s = new ModelStore({ openMeta });
  await assert.rejects(createEngine({ model: bytesReader(bad.truncated, "truncated.gguf"), platform: nodePlatform, store: s }), GGUFError);
  assert.equal(s.entries.length, 0);
});

// -- llama.cpp's vectors (tests/vocab_vectors.py reads them the same way) ---------------------------------

const VOCAB = process.env.REALM_VOCAB_DIR;
const MARKER = "\n__ggml_vocab_test__\n";
const WITH_VECTORS = ["bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2",
  "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"];

/** @param {string} dir @param {string} name @returns {[string, number[]][]} */
function readVectors(dir, name) {
  let inp = fs.readFileSync(path.join(dir, `ggml-vocab-${name}.gguf.inp`), "utf8");
  const out = fs.readFileSync(path.join(dir, `ggml-vocab-${name}.gguf.out`), "utf8");
  if (inp.endsWith(MARKER)) inp = inp.slice(0, -MARKER.length);
  const texts = inp.split(MARKER);
  const lines = out.split("\n");
  assert.equal(lines.pop(), "", "trailing newline");
  assert.equal(texts.length, lines.length, name);
  return texts.map((t, i) => [t, lines[i].split(/\s+/).filter(Boolean).map(Number)]);
}

for (const name of WITH_VECTORS) {
  const skip = !VOCAB ? "REALM_VOCAB_DIR is not set (tests/integration/test_js_node.py sets it)" : false;
  test(`llama.cpp's vectors: ${name}`, { skip }, async () => {
    const dir = /** @type {string} */ (VOCAB);
    const file = path.join(dir, `ggml-vocab-${name}.gguf`);
    assert.ok(fs.existsSync(file), `${file} is missing`);
    const m = loader.open(await nodePlatform.openFile(file));
    const cases = readVectors(dir, name);
    assert.ok(cases.length > 40, `${cases.length} cases`);
    const bad = cases.filter(([text, want]) => JSON.stringify(m.tokenize(text, { addBos: false })) !== JSON.stringify(want));
    assert.equal(bad.length, 0, `${bad.length}/${cases.length} mismatch, first: ${JSON.stringify(bad[0]?.[0])}`);
  });
}
