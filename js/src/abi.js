// The host side of the host/guest ABI (docs/abi.md) for JavaScript: error codes and struct layouts
// from the table generated from realm/host/abi.py (abi_table.js), and the host functions of one
// tenant (guest), with the same argument checks, in the same order, and the same codes as the
// Python `realm.host.abi.Tenant`. Host functions never throw across the boundary, except an
// InterruptError (deadline/cancel), which unwinds the guest like a wasmtime trap.

import TABLE from "./abi_table.js";
import { GuestError, IdConflictError, InterruptError, QuotaError, BadModelError, NoModelError } from "./errors.js";

export { TABLE };
export const ABI_VERSION = TABLE.abi_version;

/** @type {Record<string, number>} name -> code */
export const ERR = Object.freeze({ ...TABLE.errors });
/** @type {Map<number, string>} */
const CODE_NAMES = new Map(Object.entries(TABLE.errors).map(([k, v]) => [v, k]));

/** `ERR_...` name of a negative code (or `code <n>`). @param {number} code */
export function codeName(code) {
  return CODE_NAMES.get(code) ?? `code ${code}`;
}

/** A GuestError carrying the ABI code. @param {string} message @param {number | null} [code] */
export function guestError(message, code = null) {
  return new GuestError(message, code, code == null ? null : codeName(code));
}

export const LIMITS = TABLE.limits;
/** @type {Record<string, {params: string[], result: string}>} name -> wasm signature of each import of `env` */
export const HOST_FUNCTIONS = TABLE.host_functions;
const U32 = 0xffffffff;
const I32_MAX = 0x7fffffff;

// ---- struct layouts ------------------------------------------------------------------------

/**
 * @typedef {{name: string, type: string, offset: number, count: number}} Field
 * @typedef {{size: number, fields: Field[]}} Layout
 */

/** @type {Record<string, Layout>} */
export const STRUCTS = TABLE.structs;

/** @param {DataView} dv @param {number} at @param {string} type */
function get(dv, at, type) {
  switch (type) {
    case "u32": return dv.getUint32(at, true);
    case "i32": return dv.getInt32(at, true);
    case "f32": return dv.getFloat32(at, true);
    case "u64": return dv.getBigUint64(at, true);
    case "i64": return dv.getBigInt64(at, true);
    default: throw new Error(`unknown field type ${type}`);
  }
}

/** @param {DataView} dv @param {number} at @param {string} type @param {number | bigint} value */
function put(dv, at, type, value) {
  switch (type) {
    case "u32": dv.setUint32(at, Number(value) >>> 0, true); break;
    case "i32": dv.setInt32(at, Number(value) | 0, true); break;
    case "f32": dv.setFloat32(at, Number(value), true); break;
    case "u64": dv.setBigUint64(at, BigInt.asUintN(64, BigInt(value)), true); break;
    case "i64": dv.setBigInt64(at, BigInt.asIntN(64, BigInt(value)), true); break;
    default: throw new Error(`unknown field type ${type}`);
  }
}

const TYPE_BYTES = /** @type {Record<string, number>} */ ({ u32: 4, i32: 4, f32: 4, u64: 8, i64: 8 });

/**
 * Decode struct `name` from `bytes` (fields with count > 1 become arrays; u64/i64 are bigint).
 * @param {string} name @param {Uint8Array} bytes
 * @returns {Record<string, any>}
 */
export function unpack(name, bytes) {
  const layout = STRUCTS[name];
  if (bytes.length < layout.size) throw new RangeError(`${name} needs ${layout.size} bytes, got ${bytes.length}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, layout.size);
  /** @type {Record<string, any>} */
  const out = {};
  for (const f of layout.fields) {
    if (f.count === 1) out[f.name] = get(dv, f.offset, f.type);
    else out[f.name] = Array.from({ length: f.count }, (_, i) => get(dv, f.offset + i * TYPE_BYTES[f.type], f.type));
  }
  return out;
}

/**
 * Encode struct `name` (missing fields are 0).
 * @param {string} name @param {Record<string, any>} values
 * @returns {Uint8Array}
 */
export function pack(name, values) {
  const layout = STRUCTS[name];
  const bytes = new Uint8Array(layout.size);
  const dv = new DataView(bytes.buffer);
  for (const f of layout.fields) {
    const v = values[f.name];
    for (let i = 0; i < f.count; i++) {
      const x = f.count === 1 ? v : v?.[i];
      put(dv, f.offset + i * TYPE_BYTES[f.type], f.type, x ?? 0);
    }
  }
  return bytes;
}

/** Byte offset of a field. @param {string} name @param {string} field */
export function fieldOffset(name, field) {
  const f = STRUCTS[name].fields.find((x) => x.name === field);
  if (!f) throw new Error(`${name} has no field ${field}`);
  return f.offset;
}

// ---- host functions --------------------------------------------------------------------------

class HostError extends Error {
  /** @param {number} code */
  constructor(code) {
    super(codeName(code));
    this.code = code;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Lossy = new TextDecoder("utf-8");

/** @param {number} x i32 from the wire */
const u32 = (x) => x >>> 0;

/** A byte count given as i32: negative (>= 2^31 as u32) is ERR_BOUNDS. @param {number} n */
function length(n) {
  const v = n >>> 0;
  if (v > I32_MAX) throw new HostError(ERR.ERR_BOUNDS);
  return v;
}

/**
 * @typedef {import("./store.js").StoredModel} StoredModel
 * @typedef {{entry: StoredModel, storeId: bigint, refs: number}} Held
 * @typedef {(level: number, text: string) => void} LogSink
 */

/**
 * One guest's view of the model store and the host functions that act for it (see the Python twin).
 * Ids are looked up in the tenant's own table only: a model held by another tenant and a missing one
 * fail identically (ERR_NO_MODEL). An explicit id given to realm_store_model is a private alias.
 */
export class Tenant {
  /**
   * @param {import("./store.js").ModelStore} store
   * @param {string} holder
   * @param {{name?: string, log?: LogSink, logRate?: number, logBurst?: number}} [options]
   */
  constructor(store, holder, options = {}) {
    this.store = store;
    this.holder = holder;
    this.name = options.name ?? holder;
    /** @type {WebAssembly.Memory | null} the guest's memory, set after instantiation */
    this.memory = null;
    /** @type {Map<bigint, Held>} */
    this.held = new Map();
    this.hostCalls = 0;
    this.bytesCopied = 0;
    /** @type {(() => void) | null} called before every host function: throws InterruptError to stop the guest */
    this.check = null;
    this.log = options.log ?? defaultLog;
    this.logRate = options.logRate ?? 50;
    this.logBurst = options.logBurst ?? 100;
    this.logTokens = this.logBurst;
    this.logTime = now();
    this.logDropped = 0;
  }

  // -- references ------------------------------------------------------------------------------

  /** Take a reference to a stored model. @param {bigint} modelId */
  acquire(modelId) {
    const held = this.held.get(modelId);
    if (held && held.storeId !== modelId) throw new IdConflictError(`${this.name} already uses id ${modelId} for other content`);
    const entry = this.store.acquire(modelId, this.holder);
    try {
      this.adopt(modelId, entry, modelId);
    } catch (e) {
      this.store.release(modelId, this.holder);
      throw e;
    }
  }

  /** Record one store reference (already taken under storeId) under the guest-visible modelId.
   * @param {bigint} modelId @param {StoredModel} entry @param {bigint} storeId */
  adopt(modelId, entry, storeId) {
    let held = this.held.get(modelId);
    if (!held) {
      held = { entry, storeId, refs: 0 };
      this.held.set(modelId, held);
    } else if (held.entry !== entry) {
      throw new IdConflictError(`${this.name} already uses id ${modelId} for other content`);
    }
    held.refs += 1;
  }

  /** @param {bigint} modelId */
  release(modelId) {
    const held = this.held.get(modelId);
    if (!held) return false;
    held.refs -= 1;
    if (held.refs <= 0) this.held.delete(modelId);
    this.store.release(held.storeId, this.holder);
    return true;
  }

  releaseAll() {
    const items = [...this.held.values()];
    this.held.clear();
    for (const h of items) {
      for (let i = 0; i < h.refs; i++) {
        try {
          this.store.release(h.storeId, this.holder);
        } catch (e) {
          if (!(e instanceof NoModelError)) throw e;
        }
      }
    }
  }

  /** name -> function for every import of docs/abi.md (module `env`). @returns {Record<string, Function>} */
  functions() {
    /** @type {Record<string, Function>} */
    const out = {};
    for (const name of Object.keys(HOST_FUNCTIONS)) {
      const fn = /** @type {any} */ (this)["_" + name];
      const wide = HOST_FUNCTIONS[name].result === "i64";
      out[name] = (/** @type {any[]} */ ...args) => {
        this.hostCalls += 1;
        try {
          if (this.check) this.check();
          const r = fn.apply(this, args);
          return wide ? BigInt(r) : r;
        } catch (e) {
          if (e instanceof InterruptError) throw e; // the deadline: unwinds the guest (a trap)
          const code = e instanceof HostError ? e.code : ERR.ERR_INTERNAL;
          if (!(e instanceof HostError)) this.log(3, `${this.name}: host function ${name} failed: ${e instanceof Error ? e.stack : e}`);
          return wide ? BigInt(code) : code;
        }
      };
    }
    return out;
  }

  // -- helpers ---------------------------------------------------------------------------------

  /** @returns {Uint8Array} a fresh view of the whole guest memory (it moves when it grows) */
  _mem() {
    if (!this.memory) throw new HostError(ERR.ERR_INTERNAL);
    return new Uint8Array(this.memory.buffer);
  }

  /** Check [ptr, ptr + len) (u32 each) lies inside memory; return ptr as u32.
   * @param {Uint8Array} mem @param {number} ptr @param {number} len */
  static _range(mem, ptr, len) {
    const p = u32(ptr);
    if (p + u32(len) > mem.length) throw new HostError(ERR.ERR_BOUNDS);
    return p;
  }

  /** @param {bigint} modelId */
  _held(modelId) {
    const held = this.held.get(modelId);
    if (!held) throw new HostError(ERR.ERR_NO_MODEL);
    return held;
  }

  /** @param {Uint8Array} mem @param {number} ptr @param {number} len */
  _name(mem, ptr, len) {
    const n = length(len);
    const p = Tenant._range(mem, ptr, n);
    if (n === 0 || n > LIMITS.max_name_bytes) throw new HostError(ERR.ERR_BAD_ARG);
    try {
      return utf8.decode(mem.subarray(p, p + n));
    } catch {
      throw new HostError(ERR.ERR_BAD_ARG);
    }
  }

  /** @param {bigint} modelId @param {number} n */
  _charge(modelId, n) {
    try {
      this.store.charge(modelId, this.holder, n);
    } catch (e) {
      if (e instanceof QuotaError) throw new HostError(ERR.ERR_QUOTA);
      throw e;
    }
    this.bytesCopied += n;
  }

  // -- the host functions (docs/abi.md) ---------------------------------------------------------

  /** @param {number} ggufPtr @param {number} ggufLen @param {bigint} modelId */
  _realm_store_model(ggufPtr, ggufLen, modelId) {
    const mem = this._mem();
    const n = length(ggufLen);
    const p = Tenant._range(mem, ggufPtr, n);
    if (modelId < 0n) return ERR.ERR_BAD_ARG;
    if (n > this.store.maxImageBytes) return ERR.ERR_QUOTA;
    const image = mem.slice(p, p + n); // the one copy out of guest memory
    let mid, entry;
    try {
      ({ id: mid, entry } = this.store.addImage(image, this.holder));
    } catch (e) {
      if (e instanceof BadModelError) return ERR.ERR_BAD_GGUF;
      if (e instanceof IdConflictError) return ERR.ERR_ID_CONFLICT;
      if (e instanceof QuotaError) return ERR.ERR_QUOTA;
      throw e;
    }
    const alias = modelId || mid;
    try {
      this.adopt(alias, entry, mid);
    } catch (e) {
      this.store.release(mid, this.holder);
      if (e instanceof IdConflictError) return ERR.ERR_ID_CONFLICT;
      throw e;
    }
    return alias;
  }

  /** @param {bigint} modelId @param {number} namePtr @param {number} nameLen @param {number} outPtr @param {number} outMax */
  _realm_get_tensor(modelId, namePtr, nameLen, outPtr, outMax) {
    const held = this._held(modelId);
    const mem = this._mem();
    const name = this._name(mem, namePtr, nameLen);
    const handle = held.entry.handles.get(name);
    if (handle === undefined) return ERR.ERR_NO_TENSOR;
    const info = held.entry.tensors[handle];
    const max = length(outMax);
    const nOut = 4 * info.n_elements;
    if (nOut > max) return ERR.ERR_TOO_SMALL;
    if (nOut > I32_MAX) return ERR.ERR_TOO_SMALL;
    const out = Tenant._range(mem, outPtr, nOut);
    if (!held.entry.supported(info.ggml_type)) return ERR.ERR_UNSUPPORTED;
    this._charge(modelId, nOut);
    const dst = new Float32Array(nOut / 4);
    const rc = held.entry.dequantizeInto(info, dst);
    if (rc < 0) return rc;
    this._mem().set(new Uint8Array(dst.buffer), out);
    return nOut;
  }

  /** @param {bigint} modelId @param {number} countPtr @param {number} sizePtr */
  _realm_get_model_info(modelId, countPtr, sizePtr) {
    const held = this._held(modelId);
    const mem = this._mem();
    const cp = Tenant._range(mem, countPtr, 4);
    const sp = Tenant._range(mem, sizePtr, 8);
    const dv = new DataView(mem.buffer);
    dv.setUint32(cp, held.entry.tensors.length, true);
    dv.setBigUint64(sp, BigInt(held.entry.tensorBytes), true);
    return 0;
  }

  /** @param {bigint} modelId */
  _realm_remove_model(modelId) {
    if (!this.release(modelId)) return ERR.ERR_NO_MODEL;
    return 0;
  }

  /** @param {bigint} modelId @param {number} namePtr @param {number} nameLen @param {number} outPtr */
  _realm_tensor_info(modelId, namePtr, nameLen, outPtr) {
    const held = this._held(modelId);
    const mem = this._mem();
    const name = this._name(mem, namePtr, nameLen);
    const handle = held.entry.handles.get(name);
    if (handle === undefined) return ERR.ERR_NO_TENSOR;
    const size = STRUCTS.TensorInfo.size;
    const out = Tenant._range(mem, outPtr, size);
    const t = held.entry.tensors[handle];
    const ne = [...t.ne, 1, 1, 1, 1].slice(0, 4);
    mem.set(pack("TensorInfo", { ggml_type: t.ggml_type, n_dims: t.ne.length, ne, n_bytes: t.n_bytes }), out);
    return handle;
  }

  /** Validate one raw read; return the absolute file offset of its first byte.
   * @param {Held} held @param {Uint8Array} mem @param {number} handle @param {bigint} offset
   * @param {number} outPtr @param {number} len */
  _checkRead(held, mem, handle, offset, outPtr, len) {
    if (!(handle >= 0 && handle < held.entry.tensors.length)) throw new HostError(ERR.ERR_NO_TENSOR);
    const n = length(len);
    Tenant._range(mem, outPtr, n);
    const info = held.entry.tensors[handle];
    if (offset < 0n || offset + BigInt(n) > BigInt(info.n_bytes)) throw new HostError(ERR.ERR_RANGE);
    return info.data_offset + Number(offset);
  }

  /** @param {bigint} modelId @param {number} handle @param {bigint} offset @param {number} outPtr @param {number} len */
  _realm_read_tensor(modelId, handle, offset, outPtr, len) {
    const held = this._held(modelId);
    const mem = this._mem();
    const src = this._checkRead(held, mem, handle, offset, outPtr, len);
    const n = u32(len);
    this._charge(modelId, n);
    if (n) held.entry.readInto(src, mem.subarray(u32(outPtr), u32(outPtr) + n));
    return n;
  }

  /** @param {bigint} modelId @param {number} reqsPtr @param {number} nReqs */
  _realm_read_tensors(modelId, reqsPtr, nReqs) {
    const held = this._held(modelId);
    const mem = this._mem();
    const count = u32(nReqs);
    if (count > LIMITS.max_read_reqs) return ERR.ERR_BAD_ARG;
    const size = STRUCTS.ReadReq.size;
    const p = Tenant._range(mem, reqsPtr, count * size);
    if (count === 0) return 0;
    const raw = mem.slice(p, p + count * size); // copied first: outputs may overlap it
    const dv = new DataView(raw.buffer);
    /** @type {[number, number, number][]} */
    const plan = [];
    let total = 0;
    for (let i = 0; i < count; i++) {
      const at = i * size;
      const handle = dv.getInt32(at, true), out = dv.getInt32(at + 4, true);
      const offset = dv.getBigInt64(at + 8, true), len = dv.getInt32(at + 16, true), reserved = dv.getInt32(at + 20, true);
      if (reserved !== 0) return ERR.ERR_BAD_ARG;
      const src = this._checkRead(held, mem, handle, offset, out, len);
      plan.push([u32(out), src, len]);
      total += len;
    }
    if (total > I32_MAX) return ERR.ERR_BAD_ARG;
    this._charge(modelId, total);
    for (const [out, src, len] of plan) if (len) held.entry.readInto(src, mem.subarray(out, out + len));
    return total;
  }

  /** @param {bigint} modelId @param {number} outPtr @param {number} outMax */
  _realm_get_config(modelId, outPtr, outMax) {
    const held = this._held(modelId);
    const mem = this._mem();
    const size = LIMITS.model_config_size;
    if (length(outMax) < size) return ERR.ERR_TOO_SMALL;
    const out = Tenant._range(mem, outPtr, size);
    const cfg = held.entry.config;
    if (typeof cfg === "number") return cfg; // ERR_BAD_GGUF / ERR_UNSUPPORTED, as the Python host maps them
    mem.set(cfg.subarray(0, size), out);
    return size;
  }

  /** @param {number} level @param {number} msgPtr @param {number} msgLen */
  _realm_log(level, msgPtr, msgLen) {
    if (!(level >= 0 && level <= 3)) return ERR.ERR_BAD_ARG;
    const mem = this._mem();
    const n = length(msgLen);
    const p = Tenant._range(mem, msgPtr, n);
    const t = now();
    this.logTokens = Math.min(this.logBurst, this.logTokens + (t - this.logTime) * this.logRate);
    this.logTime = t;
    if (this.logTokens < 1) {
      this.logDropped += 1;
      return 0;
    }
    this.logTokens -= 1;
    let text = utf8Lossy.decode(mem.subarray(p, p + Math.min(n, LIMITS.log_max_bytes)));
    if (n > LIMITS.log_max_bytes) text += " [truncated]";
    if (this.logDropped) {
      text += ` [${this.logDropped} earlier message(s) dropped by the rate limit]`;
      this.logDropped = 0;
    }
    this.log(level, `[${this.name}] ${text}`);
    return 0;
  }

  // One instance per engine in the JavaScript hosts: no shards, so the peer functions are unsupported.
  _realm_peers_begin() { return ERR.ERR_UNSUPPORTED; }
  _realm_peers_end() { return ERR.ERR_UNSUPPORTED; }
  _realm_peer_wait() { return ERR.ERR_UNSUPPORTED; }
  _realm_peer_notify() { return ERR.ERR_UNSUPPORTED; }
}

/** seconds, monotonic */
function now() {
  return performance.now() / 1000;
}

/** @type {LogSink} */
function defaultLog(level, text) {
  if (level >= 2) console.warn(`realm: ${text}`);
}
