// Test helpers: the fixture models (tests/js_fixtures.py writes them with the Python oracle's
// description) and a meta-module double built from that description, for tests of the store, the
// ABI checks and the guest driver that must not depend on the meta module.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { GGUFError } from "../src/errors.js";
import { ERR, TABLE } from "../src/abi.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The fixture folder: $REALM_JS_FIXTURES, else written now by the Python script into a temp folder. */
export function fixtures() {
  let dir = process.env.REALM_JS_FIXTURES;
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "realm-js-fx-"));
    const r = spawnSync("python3", [path.join(ROOT, "tests", "js_fixtures.py"), dir], { cwd: ROOT, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`tests/js_fixtures.py failed: ${r.stderr}`);
    process.env.REALM_JS_FIXTURES = dir;
  }
  const info = JSON.parse(fs.readFileSync(path.join(dir, "tiny-llama.json"), "utf8"));
  return { dir, info, model: path.join(dir, "tiny-llama.gguf"), foreign: path.join(dir, "tiny-llama-foreign.gguf") };
}

const F32 = TABLE.ggml_types.F32.id;

/**
 * A ModelMeta double answering from the Python description (tensor table, config bytes, strings);
 * dequantizes F32 only. Recognises the fixture files by size; anything else is a GGUFError.
 * @param {any} info
 */
export function metaDouble(info) {
  const config = Uint8Array.from(Buffer.from(info.config_hex, "hex"));
  /** @param {import("../src/store.js").RangeReader} reader */
  return (reader) => {
    if (reader.size !== info.size && reader.size !== info.foreign_size) throw new GGUFError(`not a fixture (size ${reader.size})`);
    return {
      tensors: info.tensors.map((/** @type {any} */ t) => ({ ...t })),
      config,
      getString: (/** @type {string} */ k) => info.strings[k] ?? null,
      /** @param {number} type @param {Uint8Array} src @param {Float32Array} out */
      dequantize(type, src, out) {
        if (type !== F32) return ERR.ERR_UNSUPPORTED;
        out.set(new Float32Array(src.slice().buffer));
        return src.length;
      },
    };
  };
}
