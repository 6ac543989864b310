// The model metadata module (realm/guest/realm_meta.wasm, /work/ref/META_ABI.md) from JavaScript:
// GGUF header and tensor table, the ModelConfigABI struct, tokenizer, streaming detokenizer and
// dequantization all run inside that sandbox (Rust, memory-capped, one instance per open model),
// so this host never parses an untrusted model file itself. This file only moves bytes in and out.

import { ERR, codeName, guestError, unpack, STRUCTS, LIMITS } from "./abi.js";
import { GGUFError, GuestError, UnsupportedError } from "./errors.js";
import { compileCapped } from "./wasm.js";

export const DEFAULT_META_BUDGET = 256 << 20;
const TOKENIZE_FLAG_BOS = 1, TOKENIZE_FLAG_SPECIAL = 2;
const ERROR_TEXT_MAX = 4096;
const MAX_OUTPUT = 64 << 20; // largest text/ids buffer grown on ERR_TOO_SMALL

const utf8 = new TextDecoder("utf-8");
const encoder = new TextEncoder();

/**
 * @typedef {import("./store.js").RangeReader} RangeReader
 * @typedef {import("./store.js").TensorEntry} TensorEntry
 * @typedef {(level: number, text: string) => void} LogSink
 */

/** The exports of realm_meta.wasm that this wrapper calls. */
const EXPORTS = ["memory", "meta_alloc", "meta_free", "meta_open", "meta_error", "meta_tensor_count", "meta_tensor_entry",
  "meta_tensor_name", "meta_get_string", "meta_config"]; // tokenizer and dequantize exports are checked at first use

/**
 * Compiles realm_meta.wasm (capped) once per budget and opens models with it.
 */
export class MetaLoader {
  /** @param {Uint8Array} bytes the module @param {{memoryBudget?: number, log?: LogSink}} [options] */
  constructor(bytes, options = {}) {
    this.bytes = bytes;
    this.memoryBudget = options.memoryBudget ?? DEFAULT_META_BUDGET;
    this.log = options.log;
    /** @type {WebAssembly.Module | null} */
    this.module = null;
  }

  async ready() {
    if (!this.module) this.module = await compileCapped(this.bytes, this.memoryBudget, "the meta module realm_meta.wasm");
    return this;
  }

  /** Open a model (synchronous once `ready()`): throws GGUFError / UnsupportedError naming the problem.
   * @param {RangeReader} reader */
  open(reader) {
    if (!this.module) throw new GuestError("MetaLoader.open before ready()");
    return new MetaModel(this.module, reader, { log: this.log });
  }
}

/** One meta instance over one model file. */
export class MetaModel {
  /** @param {WebAssembly.Module} module @param {RangeReader} reader @param {{log?: LogSink}} [options] */
  constructor(module, reader, options = {}) {
    this.reader = reader;
    this.log = options.log ?? (() => {});
    /** @type {Record<string, any>} */
    let ex;
    try {
      const instance = new WebAssembly.Instance(module, { env: this._imports() });
      ex = /** @type {any} */ (instance.exports);
    } catch (e) {
      throw new GuestError(`cannot instantiate the meta module: ${e instanceof Error ? e.message : e}`);
    }
    for (const name of EXPORTS) if (!(name in ex)) throw new GuestError(`the meta module lacks the export ${name}`);
    this.ex = ex;
    this.memory = /** @type {WebAssembly.Memory} */ (ex.memory);
    this.scratch = { ptr: 0, size: 0 };
    this.tokenizerReady = false;
    const rc = this._call("meta_open", BigInt(reader.size));
    if (rc < 0) throw this._fileError("cannot open the model", rc);
    this.tensors = this._readTensors();
    const cfg = this._buffer(LIMITS.model_config_size);
    const n = this._call("meta_config", cfg, LIMITS.model_config_size);
    /** @type {Uint8Array | number} */
    this.config = n < 0 ? n : this._bytes(cfg, LIMITS.model_config_size).slice();
    /** @type {string | undefined} */
    this.configError = n < 0 ? this.errorText() : undefined;
  }

  _imports() {
    return {
      /** @param {bigint} offset @param {number} outPtr @param {number} len */
      realm_file_read: (offset, outPtr, len) => {
        try {
          const p = outPtr >>> 0, n = len >>> 0;
          if (n > 0x7fffffff) return ERR.ERR_BOUNDS;
          const mem = new Uint8Array(this.memory.buffer);
          if (p + n > mem.length) return ERR.ERR_BOUNDS;
          if (offset < 0n) return ERR.ERR_RANGE;
          if (offset >= BigInt(this.reader.size)) return 0;
          const off = Number(offset);
          const want = Math.min(n, this.reader.size - off);
          let done = 0;
          while (done < want) {
            const got = this.reader.read(off + done, mem.subarray(p + done, p + want));
            if (got <= 0) break;
            done += got;
          }
          return done;
        } catch (e) {
          this.log(3, `meta: realm_file_read failed: ${e instanceof Error ? e.message : e}`);
          return ERR.ERR_INTERNAL;
        }
      },
      /** @param {number} level @param {number} ptr @param {number} len */
      realm_log: (level, ptr, len) => {
        if (!(level >= 0 && level <= 3)) return ERR.ERR_BAD_ARG;
        const p = ptr >>> 0, n = Math.min(len >>> 0, LIMITS.log_max_bytes);
        const mem = new Uint8Array(this.memory.buffer);
        if (p + n > mem.length) return ERR.ERR_BOUNDS;
        this.log(level, `[meta] ${utf8.decode(mem.subarray(p, p + n))}`);
        return 0;
      },
    };
  }

  /** @param {string} name @param {...any} args @returns {number} */
  _call(name, ...args) {
    const fn = this.ex[name];
    if (typeof fn !== "function") throw new GuestError(`the meta module lacks the export ${name}`);
    try {
      return fn(...args);
    } catch (e) {
      throw new GuestError(`meta module: ${name} trapped: ${e instanceof Error ? e.message : e}`);
    }
  }

  /** The meta module's text of its last error. */
  errorText() {
    const p = this._buffer(ERROR_TEXT_MAX);
    const n = this._call("meta_error", p, ERROR_TEXT_MAX);
    return n > 0 ? utf8.decode(this._bytes(p, n)) : "";
  }

  /** @param {string} what @param {number} rc */
  _fileError(what, rc) {
    const text = this.errorText();
    const msg = `${this.reader.name ?? "model"}: ${what}: ${text || codeName(rc)}`;
    if (rc === ERR.ERR_UNSUPPORTED) return new UnsupportedError(msg);
    if (rc === ERR.ERR_BAD_GGUF) return new GGUFError(msg);
    return guestError(msg, rc);
  }

  /** A scratch buffer of at least n bytes in meta memory (reused; re-allocated larger). @param {number} n */
  _buffer(n) {
    if (this.scratch.size < n) {
      if (this.scratch.ptr) this._call("meta_free", this.scratch.ptr, this.scratch.size);
      const size = Math.max(n, 4096);
      const p = this._call("meta_alloc", size) >>> 0;
      if (!p) throw guestError(`the meta module could not allocate ${size} bytes (its memory budget?)`, ERR.ERR_OOM);
      this.scratch = { ptr: p, size };
    }
    return this.scratch.ptr;
  }

  /** @param {number} ptr @param {number} n */
  _bytes(ptr, n) {
    return new Uint8Array(this.memory.buffer, ptr >>> 0, n);
  }

  /** @returns {TensorEntry[]} */
  _readTensors() {
    const count = this._call("meta_tensor_count");
    if (count < 0) throw this._fileError("cannot list tensors", count);
    const size = STRUCTS.MetaTensor.size;
    /** @type {TensorEntry[]} */
    const out = [];
    for (let i = 0; i < count; i++) {
      const p = this._buffer(size + LIMITS.max_name_bytes);
      const rc = this._call("meta_tensor_entry", i, p);
      if (rc < 0) throw this._fileError(`cannot read tensor entry ${i}`, rc);
      const e = unpack("MetaTensor", this._bytes(p, size));
      const nameLen = this._call("meta_tensor_name", i, p + size, LIMITS.max_name_bytes);
      if (nameLen < 0) throw this._fileError(`cannot read the name of tensor ${i}`, nameLen);
      const name = utf8.decode(this._bytes(p + size, nameLen));
      /** @type {number[]} */
      const ne = e.ne.slice(0, e.n_dims).map(Number);
      out.push({
        name, ggml_type: e.ggml_type, ne, n_bytes: Number(e.n_bytes), data_offset: Number(e.data_offset),
        n_elements: ne.reduce((a, b) => a * b, 1),
      });
    }
    return out;
  }

  /** Run an export that writes a variable-size result, growing the buffer on ERR_TOO_SMALL.
   * @param {(out: number, max: number) => number} fn @param {number} first @param {string} what */
  _grow(fn, first, what) {
    let max = first;
    for (let attempt = 0; attempt < 8; attempt++) {
      const out = this._buffer(max);
      const n = fn(out, max);
      if (n !== ERR.ERR_TOO_SMALL) return { out, n };
      const need = typeof this.ex.meta_last_size === "function" ? this._call("meta_last_size") : 0;
      max = need > max ? need : max * 4;
      if (max > MAX_OUTPUT) throw guestError(`${what}: result larger than ${MAX_OUTPUT} bytes`, n);
    }
    throw guestError(`${what}: the output buffer kept being too small`, ERR.ERR_TOO_SMALL);
  }

  /** Write bytes into a dedicated meta buffer (freed by the caller via meta_free). @param {Uint8Array} data */
  _input(data) {
    const size = Math.max(1, data.length);
    const p = this._call("meta_alloc", size) >>> 0;
    if (!p) throw guestError(`the meta module could not allocate ${size} bytes`, ERR.ERR_OOM);
    new Uint8Array(this.memory.buffer, p, data.length).set(data);
    return { p, size };
  }

  /** A string metadata value, or null when absent. @param {string} key */
  getString(key) {
    const k = this._input(encoder.encode(key));
    try {
      const { out, n } = this._grow((o, m) => this._call("meta_get_string", k.p, encoder.encode(key).length, o, m), 256, `metadata ${key}`);
      if (n === ERR.ERR_NO_TENSOR) return null; // absent key
      if (n < 0) throw this._fileError(`cannot read metadata ${key}`, n);
      return utf8.decode(this._bytes(out, n));
    } finally {
      this._call("meta_free", k.p, k.size);
    }
  }

  // -- tokenizer ---------------------------------------------------------------------------------

  /** Build the tokenizer (once); throws UnsupportedError for a family the module lacks. */
  initTokenizer() {
    if (this.tokenizerReady) return;
    const rc = this._call("meta_tokenizer_init");
    if (rc < 0) throw this._fileError("cannot build the tokenizer", rc);
    this.tokenizerReady = true;
    this.vocabSize = this._call("meta_vocab_size");
    const max = 64;
    const p = this._buffer(4 * max);
    const n = this._call("meta_stop_ids", p, max);
    if (n < 0) throw this._fileError("cannot read the stop ids", n);
    this.stopIds = new Set(Array.from(this._i32(p, n)));
  }

  /** @param {string} text @param {{addBos?: boolean, special?: boolean}} [options] @returns {number[]} */
  tokenize(text, options = {}) {
    this.initTokenizer();
    const bytes = encoder.encode(text);
    const input = this._input(bytes);
    const flags = (options.addBos ?? true ? TOKENIZE_FLAG_BOS : 0) | (options.special ? TOKENIZE_FLAG_SPECIAL : 0);
    try {
      const { out, n } = this._grow((o, m) => this._call("meta_tokenize", input.p, bytes.length, flags, o, m >>> 2),
        4 * (bytes.length + 8), "tokenize");
      if (n < 0) throw this._fileError("tokenize failed", n);
      return Array.from(this._i32(out, n));
    } finally {
      this._call("meta_free", input.p, input.size);
    }
  }

  /** n i32 values at ptr (copied when ptr is not 4-aligned). @param {number} ptr @param {number} n */
  _i32(ptr, n) {
    const p = ptr >>> 0;
    if (p % 4 === 0) return new Int32Array(this.memory.buffer, p, n);
    return new Int32Array(this._bytes(p, 4 * n).slice().buffer);
  }

  /** @param {number[]} ids @param {{special?: boolean}} [options] */
  detokenize(ids, options = {}) {
    this.initTokenizer();
    const input = this._input(new Uint8Array(Int32Array.from(ids).buffer));
    try {
      const { out, n } = this._grow((o, m) => this._call("meta_detokenize", input.p, ids.length, options.special ? 1 : 0, o, m),
        16 * ids.length + 64, "detokenize");
      if (n < 0) throw this._fileError("detokenize failed", n);
      return utf8.decode(this._bytes(out, n));
    } finally {
      this._call("meta_free", input.p, input.size);
    }
  }

  /** Start a streaming decode (as Python StreamDecoder). @param {{special?: boolean}} [options] */
  streamReset(options = {}) {
    this.initTokenizer();
    const rc = this._call("meta_stream_reset", options.special ? 1 : 0);
    if (rc < 0) throw this._fileError("stream reset failed", rc);
  }

  /** Text completed by one more token ("" while a UTF-8 character is incomplete). @param {number} id */
  streamFeed(id) {
    const { out, n } = this._grow((o, m) => this._call("meta_stream_feed", id, o, m), 1024, "stream decode");
    if (n < 0) throw this._fileError(`stream decode of token ${id} failed`, n);
    return utf8.decode(this._bytes(out, n));
  }

  streamFlush() {
    const { out, n } = this._grow((o, m) => this._call("meta_stream_flush", o, m), 1024, "stream flush");
    if (n < 0) throw this._fileError("stream flush failed", n);
    return utf8.decode(this._bytes(out, n));
  }

  // -- dequantization --------------------------------------------------------------------------

  /** Raw blocks -> f32 (bit-exact with gguf-py). @param {number} ggmlType @param {Uint8Array} src @param {Float32Array} out */
  dequantize(ggmlType, src, out) {
    const input = this._input(src);
    try {
      const max = 4 * out.length;
      const o = this._call("meta_alloc", max) >>> 0;
      if (!o) return ERR.ERR_OOM;
      try {
        const n = this._call("meta_dequantize", ggmlType, input.p, src.length, o, max);
        if (n < 0) return n;
        if (n !== max) return ERR.ERR_INTERNAL;
        out.set(o % 4 === 0 ? new Float32Array(this.memory.buffer, o, out.length) : new Float32Array(this._bytes(o, max).slice().buffer));
        return n;
      } finally {
        this._call("meta_free", o, max);
      }
    } finally {
      this._call("meta_free", input.p, input.size);
    }
  }

  /** Linear memory of the instance in bytes. */
  get memorySize() {
    return this.memory.buffer.byteLength;
  }

  close() {
    // nothing to free: the instance and its memory go with the object
  }
}
