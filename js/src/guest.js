// One sandboxed instance of the inference guest (realm/guest/realm_guest.wasm, the file the Python
// host runs): its memory capped in the module's memory section (wasm.js), linked to the host
// functions of its Tenant (abi.js), every call under a deadline and a cancel flag. A trap, a missed
// deadline or a cancel leaves the instance unusable (its state may be half-updated), as in
// realm/host/runtime.py.

import { Tenant, guestError } from "./abi.js";
import { GuestError, InterruptError } from "./errors.js";
import { compileCapped } from "./wasm.js";

export const DEFAULT_BUDGET = 64 << 20;
export const DEFAULT_TIMEOUT = 60; // seconds per guest call (a 64-token prefill chunk takes ~3 s here)

const REQUIRED = ["realm_alloc", "realm_free", "realm_init", "realm_eval", "realm_logits_ptr", "realm_sample", "realm_reset", "realm_stats"];
let holderIds = 0;

/**
 * @typedef {object} GuestOptions
 * @property {Uint8Array} wasm the guest module's bytes
 * @property {import("./store.js").ModelStore} store
 * @property {number} [memoryBudget] cap on linear memory, bytes (default 64 MiB)
 * @property {number | null} [timeout] seconds one call may run (null: no limit)
 * @property {string} [name]
 * @property {(level: number, text: string) => void} [log]
 */

export class Guest {
  /** @param {GuestOptions} options */
  static async create(options) {
    const budget = options.memoryBudget ?? DEFAULT_BUDGET;
    const t0 = performance.now();
    const module = await compileCapped(options.wasm, budget, "the guest realm_guest.wasm");
    const g = new Guest(module, options);
    g.compileSeconds = (performance.now() - t0) / 1000 - g.instantiateSeconds;
    return g;
  }

  /** @param {WebAssembly.Module} module @param {GuestOptions} options */
  constructor(module, options) {
    this.store = options.store;
    this.holder = `js-guest-${++holderIds}`;
    this.name = options.name ?? this.holder;
    this.memoryBudget = options.memoryBudget ?? DEFAULT_BUDGET;
    this.timeout = options.timeout === undefined ? DEFAULT_TIMEOUT : options.timeout;
    this.compileSeconds = 0;
    /** @type {string | null} why the instance is unusable */
    this.trapped = null;
    this.closed = false;
    this.cancelled = false;
    this.deadline = Infinity;
    this.current = "";
    this.tenant = new Tenant(this.store, this.holder, { name: this.name, log: options.log });
    this.tenant.check = () => this._check();
    const t0 = performance.now();
    let instance;
    try {
      instance = new WebAssembly.Instance(module, { env: /** @type {any} */ (this.tenant.functions()) });
    } catch (e) {
      throw new GuestError(`cannot instantiate the guest: ${e instanceof Error ? e.message : e}`);
    }
    this.instantiateSeconds = (performance.now() - t0) / 1000;
    /** @type {Record<string, any>} */
    this.ex = /** @type {any} */ (instance.exports);
    if (!(this.ex.memory instanceof WebAssembly.Memory)) throw new GuestError("the guest exports no linear memory named 'memory'");
    for (const name of REQUIRED) {
      if (typeof this.ex[name] !== "function") throw new GuestError(`the guest lacks the export ${name}`);
    }
    this.memory = /** @type {WebAssembly.Memory} */ (this.ex.memory);
    this.tenant.memory = this.memory;
  }

  _check() {
    if (this.cancelled) throw new InterruptError(`${this.name}: ${this.current} was cancelled`);
    if (performance.now() > this.deadline) {
      throw new InterruptError(`${this.name}: ${this.current} ran past its deadline of ${this.timeout} s`);
    }
  }

  /** Call an export; traps and deadlines become GuestError naming the call. @param {string} name @param {...(number | bigint)} args */
  call(name, ...args) {
    if (this.closed) throw new GuestError(`${this.name} is closed`);
    if (this.trapped) throw new GuestError(`${this.name} is unusable after an earlier failure: ${this.trapped}`);
    const fn = this.ex[name];
    if (typeof fn !== "function") throw new GuestError(`the guest has no export ${name}`);
    this.current = name;
    this.deadline = this.timeout == null ? Infinity : performance.now() + 1000 * this.timeout;
    try {
      return fn(...args);
    } catch (e) {
      if (e instanceof InterruptError) {
        this.trapped = e.message;
        throw e;
      }
      const text = e instanceof Error ? e.message : String(e);
      this.trapped = `${name} trapped: ${text}`;
      if (e instanceof RangeError && /memory|stack/i.test(text)) {
        throw new GuestError(`${this.name}: ${name} trapped (${text}); the memory budget of ${(this.memoryBudget / 2 ** 20).toFixed(1)} MiB may be too small`);
      }
      throw new GuestError(`${this.name}: ${name} trapped: ${text}`);
    } finally {
      this.deadline = Infinity;
    }
  }

  /** Stop the running call at its next host call (and every later one). */
  cancel() {
    this.cancelled = true;
  }

  /** @param {number} size */
  alloc(size) {
    const p = this.call("realm_alloc", size) >>> 0;
    if (!p) throw guestError(`${this.name}: realm_alloc(${size}) failed (memory budget exhausted?)`, -20);
    return p;
  }

  /** @param {number} ptr @param {number} size */
  free(ptr, size) {
    this.call("realm_free", ptr, size);
  }

  /** @param {number} ptr @param {Uint8Array} data */
  write(ptr, data) {
    this._view(ptr, data.length).set(data);
  }

  /** A copy of n bytes at ptr. @param {number} ptr @param {number} n */
  read(ptr, n) {
    return this._view(ptr, n).slice();
  }

  /** @param {number} ptr @param {number} n */
  _view(ptr, n) {
    const buf = this.memory.buffer;
    if (ptr < 0 || n < 0 || ptr + n > buf.byteLength) {
      throw guestError(`range [${ptr}, ${ptr + n}) is outside the guest's memory of ${buf.byteLength} bytes`, -1);
    }
    return new Uint8Array(buf, ptr, n);
  }

  get memorySize() {
    return this.memory.buffer.byteLength;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.tenant.releaseAll();
  }
}
