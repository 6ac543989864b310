// The model store of the JavaScript host: every model once, read by byte ranges from its file
// (never loaded whole), described by the model metadata module (meta.js: header, tensor table,
// config), shared by every guest with reference counts per guest (holder). Ids are consumer-chosen
// (0 < id < 2^63) or content-derived (first 8 bytes of the SHA-256, top bit cleared), as in
// realm/host/store.py; one id never names two contents.

import { TABLE, ERR } from "./abi.js";
import { Sha256 } from "./sha256.js";
import { BadModelError, GGUFError, IdConflictError, NoModelError, QuotaError, RealmError, StoreError, UnsupportedError } from "./errors.js";

export const MAX_ID = (1n << 63n) - 1n;
export const HASH_BLOCK = 4 << 20; // bytes hashed per read
export const DEFAULT_MAX_IMAGE_BYTES = 1 << 30;
const DEQUANT_CHUNK = 1 << 20; // raw bytes dequantized per meta call

/**
 * The platform's view of a model file: synchronous range reads (fs.readSync with a position,
 * FileSystemSyncAccessHandle.read with {at}, or an in-memory image).
 * @typedef {object} RangeReader
 * @property {number} size bytes
 * @property {string} [name]
 * @property {(offset: number, dst: Uint8Array) => number} read copy [offset, offset + dst.length) into dst; bytes copied (short only at EOF)
 * @property {() => Promise<Uint8Array>} [digest] the file's SHA-256, when the platform has a faster one
 * @property {() => void} [close]
 */

/**
 * What the meta module reports about one tensor.
 * @typedef {{name: string, ggml_type: number, ne: number[], n_bytes: number, data_offset: number, n_elements: number}} TensorEntry
 */

/**
 * One opened model description (meta.js `MetaModel`, or a test double).
 * @typedef {object} ModelMeta
 * @property {TensorEntry[]} tensors in file order (handle = index)
 * @property {Uint8Array | number} config the 128-byte ModelConfigABI, or ERR_BAD_GGUF / ERR_UNSUPPORTED
 * @property {string} [configError] the meta module's message when config is an error code
 * @property {(key: string) => string | null} getString
 * @property {(ggmlType: number, src: Uint8Array, out: Float32Array) => number} dequantize bytes written or a negative code
 * @property {() => void} [close]
 */

/** @typedef {(reader: RangeReader) => ModelMeta} OpenMeta throws GGUFError/UnsupportedError for a bad file */

/** @param {Uint8Array} digest */
export function contentId(digest) {
  let v = 0n;
  for (let i = 0; i < 8; i++) v = (v << 8n) | BigInt(digest[i]);
  v &= MAX_ID;
  return v || 1n;
}

/** @param {unknown} id */
function checkId(id) {
  if (typeof id !== "bigint" || id <= 0n || id > MAX_ID) throw new StoreError(`model id must be a bigint in [1, 2^63), got ${String(id)}`);
  return id;
}

/** A RangeReader over bytes in memory. @param {Uint8Array} bytes @param {string} [name] @returns {RangeReader} */
export function bytesReader(bytes, name = "image") {
  return {
    size: bytes.length,
    name,
    read(offset, dst) {
      const n = Math.max(0, Math.min(dst.length, bytes.length - offset));
      dst.set(bytes.subarray(offset, offset + n));
      return n;
    },
  };
}

/** SHA-256 of a reader's bytes, hashed in HASH_BLOCK reads. @param {RangeReader} reader */
export async function readerDigest(reader) {
  if (reader.digest) return reader.digest();
  const h = new Sha256();
  const buf = new Uint8Array(Math.min(HASH_BLOCK, Math.max(1, reader.size)));
  for (let off = 0; off < reader.size;) {
    const want = Math.min(buf.length, reader.size - off);
    const n = reader.read(off, buf.subarray(0, want));
    if (n <= 0) throw new RealmError(`${reader.name ?? "model"}: read at ${off} returned nothing (file shrank?)`);
    h.update(buf.subarray(0, n));
    off += n;
  }
  return h.digest();
}

/** @param {Uint8Array} a @param {Uint8Array} b */
function sameDigest(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

const SUPPORTED = new Set(Object.values(TABLE.ggml_types).filter((t) => t.supported).map((t) => t.id));
/** @type {Map<number, {block_size: number, type_size: number}>} */
const TYPE_SIZES = new Map(Object.values(TABLE.ggml_types).map((t) => [t.id, t]));

/** One stored copy: the reader, its description, the ids naming it, its holders, its accounting. */
export class StoredModel {
  /**
   * @param {RangeReader} reader @param {ModelMeta} meta @param {Uint8Array} digest @param {boolean} pinned
   */
  constructor(reader, meta, digest, pinned) {
    this.reader = reader;
    this.meta = meta;
    this.digest = digest;
    this.pinned = pinned;
    /** @type {Set<bigint>} */
    this.ids = new Set();
    /** @type {Map<string, number>} holder -> references */
    this.holders = new Map();
    this.removed = false;
    this.closed = false;
    this.bytesServed = 0;
    this.tensors = meta.tensors;
    /** @type {Map<string, number>} name -> handle (file order) */
    this.handles = new Map(this.tensors.map((t, i) => [t.name, i]));
    this.tensorBytes = this.tensors.reduce((s, t) => s + t.n_bytes, 0);
  }

  get config() {
    return this.meta.config;
  }

  /** @param {number} ggmlType */
  supported(ggmlType) {
    return SUPPORTED.has(ggmlType);
  }

  /** Copy file bytes [offset, offset + dst.length) into dst (a view of guest memory), all or throw.
   * @param {number} offset @param {Uint8Array} dst */
  readInto(offset, dst) {
    let done = 0;
    while (done < dst.length) {
      const n = this.reader.read(offset + done, dst.subarray(done));
      if (n <= 0) throw new RealmError(`${this.reader.name ?? "model"}: short read at ${offset + done} (file changed?)`);
      done += n;
    }
    this.bytesServed += dst.length;
  }

  /** The tensor dequantized to f32 into `out` (n_elements floats), in chunks of whole blocks through
   * the meta module; 0 or a negative code. @param {TensorEntry} info @param {Float32Array} out */
  dequantizeInto(info, out) {
    const sizes = TYPE_SIZES.get(info.ggml_type);
    if (!sizes || !this.supported(info.ggml_type)) return ERR.ERR_UNSUPPORTED;
    const blocks = Math.max(1, Math.floor(DEQUANT_CHUNK / sizes.type_size));
    const chunk = blocks * sizes.type_size;
    const raw = new Uint8Array(Math.min(chunk, info.n_bytes));
    let element = 0;
    for (let off = 0; off < info.n_bytes; off += chunk) {
      const n = Math.min(chunk, info.n_bytes - off);
      const src = raw.subarray(0, n);
      this.readInto(info.data_offset + off, src);
      const count = (n / sizes.type_size) * sizes.block_size;
      const rc = this.meta.dequantize(info.ggml_type, src, out.subarray(element, element + count));
      if (rc < 0) return rc;
      element += count;
    }
    return element === info.n_elements ? 0 : ERR.ERR_INTERNAL;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.meta.close?.();
    this.reader.close?.();
  }
}

/**
 * @typedef {{maxReadBytes: number | null, maxModels: number | null, bytesRead: number}} HolderLimits
 */

export class ModelStore {
  /** @param {{openMeta: OpenMeta, maxImageBytes?: number}} options */
  constructor(options) {
    this.openMeta = options.openMeta;
    this.maxImageBytes = options.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES;
    /** @type {Map<bigint, StoredModel>} */
    this.byId = new Map();
    /** @type {StoredModel[]} */
    this.entries = [];
    /** @type {Map<string, HolderLimits>} */
    this.limits = new Map();
  }

  /**
   * Store a model (a RangeReader from the platform, or a GGUF image as bytes); returns its id.
   * `id` omitted derives it from the content; with `holder` the holder also gets a reference;
   * `pin: false` (needs a holder) frees the model with its last holder. The same content stored
   * twice is one copy. Throws GGUFError/UnsupportedError (bad file), IdConflictError, QuotaError.
   * @param {RangeReader | Uint8Array} source
   * @param {{id?: bigint, holder?: string, pin?: boolean}} [options]
   */
  async storeModel(source, options = {}) {
    const { holder, pin = true } = options;
    const id = options.id === undefined ? undefined : checkId(options.id);
    if (!pin && holder === undefined) throw new StoreError("an unpinned model needs a holder");
    const reader = source instanceof Uint8Array ? bytesReader(source) : source;
    const digest = await readerDigest(reader);
    const r = this._insert(reader, digest, id, holder, pin, true);
    if (r.entry.reader !== reader) reader.close?.(); // the content was already stored
    return r.id;
  }

  /**
   * A GGUF image handed over by a guest (realm_store_model): a private copy, parsed even when the
   * content is already stored, referenced by `holder`, freed with its last holder. Synchronous.
   * Throws BadModelError, IdConflictError, QuotaError.
   * @param {Uint8Array} image @param {string} holder
   */
  addImage(image, holder) {
    if (image.length > this.maxImageBytes) throw new QuotaError(`GGUF image of ${image.length} bytes exceeds the store's limit ${this.maxImageBytes}`);
    const reader = bytesReader(image);
    const digest = new Sha256().update(image).digest();
    let meta;
    try {
      meta = this.openMeta(reader);
    } catch (e) {
      if (e instanceof GGUFError || e instanceof UnsupportedError) throw new BadModelError(`malformed GGUF image: ${e.message}`);
      throw e;
    }
    const r = this._insert(reader, digest, undefined, holder, false, false, meta);
    if (r.entry.meta !== meta) meta.close?.(); // the content was already stored: this parse only validated it
    return r;
  }

  /**
   * @param {RangeReader} reader @param {Uint8Array} digest @param {bigint | undefined} id
   * @param {string | undefined} holder @param {boolean} pin @param {boolean} revive @param {ModelMeta} [meta]
   * @returns {{id: bigint, entry: StoredModel}}
   */
  _insert(reader, digest, id, holder, pin, revive, meta) {
    const mid = id ?? contentId(digest);
    let entry = this._existing(digest, mid);
    if (!entry) {
      this._checkModelCount(holder);
      entry = new StoredModel(reader, meta ?? this.openMeta(reader), digest, pin);
      entry.ids.add(mid);
      this.byId.set(mid, entry);
      this.entries.push(entry);
    } else {
      // a guest never revives a model the consumer removed (it shares the removed copy); a consumer does
      if (entry.removed && revive) entry.removed = false;
      if (!entry.ids.has(mid)) {
        entry.ids.add(mid);
        this.byId.set(mid, entry);
      }
      if (pin) entry.pinned = true;
      if (holder !== undefined && !entry.holders.has(holder)) this._checkModelCount(holder);
    }
    if (holder !== undefined) entry.holders.set(holder, (entry.holders.get(holder) ?? 0) + 1);
    return { id: mid, entry };
  }

  /** @param {Uint8Array} digest @param {bigint} mid */
  _existing(digest, mid) {
    const byId = this.byId.get(mid);
    if (byId && !sameDigest(byId.digest, digest)) throw new IdConflictError(`model id ${mid} is already used by different content`);
    if (byId) return byId;
    return this.entries.find((e) => !e.closed && sameDigest(e.digest, digest));
  }

  /** @param {string | undefined} holder */
  _checkModelCount(holder) {
    if (holder === undefined) return;
    const lim = this.limits.get(holder);
    if (!lim || lim.maxModels == null) return;
    const held = this.entries.filter((e) => e.holders.has(holder)).length;
    if (held >= lim.maxModels) throw new QuotaError(`${holder} already holds ${held} model(s), its limit`);
  }

  // -- references --------------------------------------------------------------------------------

  /** @param {bigint} id */
  _get(id) {
    const entry = this.byId.get(id);
    if (!entry || entry.closed) throw new NoModelError(`no model with id ${id}`);
    return entry;
  }

  /** Give `holder` a reference to a stored model. @param {bigint} id @param {string} holder */
  acquire(id, holder) {
    const entry = this._get(id);
    if (entry.removed) throw new NoModelError(`model ${id} was removed`);
    if (!entry.holders.has(holder)) this._checkModelCount(holder);
    entry.holders.set(holder, (entry.holders.get(holder) ?? 0) + 1);
    return entry;
  }

  /** Drop one of `holder`'s references. @param {bigint} id @param {string} holder */
  release(id, holder) {
    const entry = this._get(id);
    const n = entry.holders.get(holder);
    if (!n) throw new NoModelError(`${holder} holds no reference to model ${id}`);
    if (n > 1) entry.holders.set(holder, n - 1);
    else entry.holders.delete(holder);
    this._maybeFree(entry);
  }

  /** Remove a model: freed now if nobody holds it, else when its last holder lets go. @param {bigint} id */
  removeModel(id) {
    const entry = this._get(id);
    entry.removed = true;
    entry.pinned = false;
    this._maybeFree(entry);
  }

  /** @param {StoredModel} entry */
  _maybeFree(entry) {
    if (entry.holders.size || entry.pinned) return;
    for (const id of entry.ids) if (this.byId.get(id) === entry) this.byId.delete(id);
    this.entries = this.entries.filter((e) => e !== entry);
    entry.close();
  }

  /** Per-holder quotas. @param {string} holder @param {{maxReadBytes?: number | null, maxModels?: number | null}} limits */
  setLimits(holder, limits) {
    const cur = this.limits.get(holder) ?? { maxReadBytes: null, maxModels: null, bytesRead: 0 };
    this.limits.set(holder, { ...cur, maxReadBytes: limits.maxReadBytes ?? null, maxModels: limits.maxModels ?? null });
  }

  /** Account `n` bytes read by `holder` (QuotaError when over its quota). @param {bigint} id @param {string} holder @param {number} n */
  charge(id, holder, n) {
    const lim = this.limits.get(holder);
    if (lim) {
      if (lim.maxReadBytes != null && lim.bytesRead + n > lim.maxReadBytes) throw new QuotaError(`${holder} exceeded its read quota of ${lim.maxReadBytes} bytes`);
      lim.bytesRead += n;
    }
  }

  // -- the bridge's four operations, for consumers ------------------------------------------------

  /** @param {bigint} id */
  getModelInfo(id) {
    const e = this._get(id);
    return {
      id,
      size: e.reader.size,
      name: e.meta.getString("general.name"),
      architecture: e.meta.getString("general.architecture"),
      tensorCount: e.tensors.length,
      totalSize: e.tensorBytes,
      tensors: e.tensors.map((t) => ({ ...t })),
      holders: e.holders.size,
      bytesServed: e.bytesServed,
    };
  }

  /** A tensor dequantized to f32. @param {bigint} id @param {string} name */
  getTensor(id, name) {
    const e = this._get(id);
    const h = e.handles.get(name);
    if (h === undefined) throw new StoreError(`model ${id} has no tensor ${JSON.stringify(name)}`);
    const info = e.tensors[h];
    if (!e.supported(info.ggml_type)) throw new UnsupportedError(`tensor ${JSON.stringify(name)}: ggml type ${info.ggml_type} is not supported`);
    const out = new Float32Array(info.n_elements);
    const rc = e.dequantizeInto(info, out);
    if (rc < 0) throw new StoreError(`dequantizing ${name} failed with code ${rc}`);
    return out;
  }

  /** Raw bytes [offset, offset + dst.length) of a tensor's data into dst. @param {bigint} id @param {string} name @param {number} offset @param {Uint8Array} dst */
  readTensor(id, name, offset, dst) {
    const e = this._get(id);
    const h = e.handles.get(name);
    if (h === undefined) throw new StoreError(`model ${id} has no tensor ${JSON.stringify(name)}`);
    const info = e.tensors[h];
    if (offset < 0 || offset + dst.length > info.n_bytes) throw new StoreError(`range [${offset}, ${offset + dst.length}) is outside ${name}'s ${info.n_bytes} bytes`);
    e.readInto(info.data_offset + offset, dst);
  }

  /** The stored entry (for the engine and tests). @param {bigint} id */
  get(id) {
    return this._get(id);
  }

  close() {
    for (const e of this.entries) e.close();
    this.entries = [];
    this.byId.clear();
  }
}
