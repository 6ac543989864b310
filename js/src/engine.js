// The generation API of the JavaScript host, shared by Node and the browser:
//
//   const engine = await createEngine({ model, platform });
//   for await (const piece of engine.generate(prompt, { maxTokens, temperature, topK, topP, seed, stop })) ...
//   engine.stats  // prefill/decode tok/s, bytes fetched, peak guest memory
//
// The model goes into a ModelStore (read by ranges, described by the meta module); one guest instance
// evaluates and samples (realm_sample reproduces realm/sampling.py bit for bit); the loop below is
// realm/generate.py's (stop ids, stop strings held back, the same stats definitions).
// One instance per engine: the Python host's shards (several instances) are not implemented here.

import { ERR, guestError, pack, unpack, STRUCTS, fieldOffset } from "./abi.js";
import { DEFAULT_BUDGET, DEFAULT_TIMEOUT, Guest } from "./guest.js";
import { DEFAULT_META_BUDGET, MetaLoader } from "./meta.js";
import { ModelStore } from "./store.js";
import { GGUFError, GuestError, RealmError, UnsupportedError } from "./errors.js";

export const MAX_BATCH = 64; // positions per realm_eval call
export const DEFAULT_CTX = 2048;
const EVAL_LAST = 0;
const EVAL_ALL = 1;
/** evalAll's chunks keep at most memoryBudget / LOGITS_SHARE bytes of logits in the guest (realm/engines/wasm.py) */
const LOGITS_SHARE = 8;
const TIMEOUT_SCALE_BYTES = 512 * 2 ** 20;

/**
 * The two platform functions the core needs (platform/node.js, platform/web.js).
 * @typedef {object} Platform
 * @property {(source: any) => Promise<import("./store.js").RangeReader>} openFile a model source -> range reader
 * @property {(name: "guest" | "meta") => Promise<Uint8Array>} loadWasm the bytes of realm_guest.wasm / realm_meta.wasm
 */

/**
 * @typedef {object} EngineOptions
 * @property {any} model a path (Node), File/OPFS handle (browser), or a RangeReader
 * @property {Platform} platform
 * @property {number} [memoryBudget] the guest's memory cap (default 64 MiB)
 * @property {number} [metaBudget] the meta module's memory cap (default 256 MiB)
 * @property {number} [nCtx] context positions (default min(model's, 2048))
 * @property {number | null | "auto"} [timeout] seconds per guest call; "auto": 60 s per 512 MiB of weights, at least 60
 * @property {ModelStore} [store] a store to share between engines
 * @property {(level: number, text: string) => void} [log]
 */

/** @type {WeakMap<Platform, Promise<Uint8Array>>} */
const guestBytes = new WeakMap();
/** @type {WeakMap<Platform, Promise<ModelStore>>} */
const stores = new WeakMap();

/** The platform's guest module bytes, loaded once. @param {Platform} platform */
function guestFor(platform) {
  let p = guestBytes.get(platform);
  if (!p) guestBytes.set(platform, (p = platform.loadWasm("guest")));
  return p;
}

/** The platform's shared store, its models described by the meta module. @param {Platform} platform @param {EngineOptions} o */
export function defaultStore(platform, o = /** @type {any} */ ({})) {
  let p = stores.get(platform);
  if (!p) {
    p = (async () => {
      const meta = await new MetaLoader(await platform.loadWasm("meta"), { memoryBudget: o.metaBudget ?? DEFAULT_META_BUDGET, log: o.log }).ready();
      return new ModelStore({ openMeta: (r) => meta.open(r) });
    })();
    p.catch(() => stores.delete(platform));
    stores.set(platform, p);
  }
  return p;
}

/** @param {EngineOptions} options */
export async function createEngine(options) {
  const { platform } = options;
  if (!platform) throw new RealmError("createEngine needs a platform (use the Node or web entry point)");
  const [wasm, store] = await Promise.all([guestFor(platform), options.store ?? defaultStore(platform, options)]);
  const reader = options.model && typeof options.model.read === "function" && typeof options.model.size === "number"
    ? options.model : await platform.openFile(options.model);
  const t0 = performance.now();
  const budget = options.memoryBudget ?? DEFAULT_BUDGET;
  const guest = await Guest.create({ wasm, store, memoryBudget: budget, timeout: null, log: options.log });
  try {
    const id = await store.storeModel(reader, { holder: guest.holder, pin: false });
    guest.tenant.adopt(id, store.get(id), id);
    const engine = new Engine(guest, id, store, options);
    engine.loadSeconds = (performance.now() - t0) / 1000;
    return engine;
  } catch (e) {
    guest.close();
    throw e;
  }
}

/**
 * @typedef {object} GenerateOptions
 * @property {number} [maxTokens] default 256
 * @property {number} [temperature] 0 = greedy (default)
 * @property {number} [topK] default 40 (0 = off)
 * @property {number} [topP] default 0.95
 * @property {number} [minP] default 0.05
 * @property {number} [repeatPenalty] default 1 (off)
 * @property {number} [repeatLastN] default 64
 * @property {number | bigint} [seed] default 0
 * @property {string[]} [stop] stop strings
 * @property {boolean} [stopAfterText] stop strings count only once the reply has non-whitespace text
 *   (so "\n\n" can end an answer that starts with it), like realm/generate.py's stop_after_text
 * @property {boolean} [special] parse special-token text in the prompt
 * @property {boolean} [reset] empty the KV cache first (default true)
 * @property {AbortSignal} [signal]
 */

export class Engine {
  /**
   * @param {Guest} guest @param {bigint} modelId @param {ModelStore} store @param {EngineOptions} options
   */
  constructor(guest, modelId, store, options) {
    this.guest = guest;
    this.modelId = modelId;
    this.store = store;
    this.entry = store.get(modelId);
    this.meta = /** @type {import("./meta.js").MetaModel} */ (/** @type {unknown} */ (this.entry.meta));
    const cfg = this.entry.config;
    if (typeof cfg === "number") {
      const msg = `${this.entry.reader.name ?? "model"} cannot run: ${this.entry.meta.configError ?? "bad config"}`;
      throw cfg === ERR.ERR_UNSUPPORTED ? new UnsupportedError(msg) : new GGUFError(msg);
    }
    this.config = unpack("ModelConfigABI", cfg);
    this.vocab = this.config.vocab_size;
    const ctx = options.nCtx ?? Math.min(this.config.context_length, DEFAULT_CTX);
    if (!(Number.isInteger(ctx) && ctx > 0)) throw new RealmError(`context size must be a positive integer, got ${ctx}`);
    if (ctx > this.config.context_length) throw new RealmError(`context ${ctx} exceeds the model's trained context length ${this.config.context_length}`);
    this.nCtx = ctx;
    this.memoryBudget = guest.memoryBudget;
    /** all-logits positions per realm_eval call; halved when the guest runs short (evalAll) */
    this.logitsStep = MAX_BATCH;
    const timeout = options.timeout ?? "auto";
    guest.timeout = timeout === "auto" ? DEFAULT_TIMEOUT * Math.max(1, this.entry.tensorBytes / TIMEOUT_SCALE_BYTES) : timeout;
    const t1 = performance.now();
    const rc = guest.call("realm_init", modelId, ctx, this.memoryBudget | 0);
    this.initSeconds = (performance.now() - t1) / 1000;
    if (rc === ERR.ERR_OOM) {
      throw guestError(`the memory budget of ${(this.memoryBudget / 2 ** 20).toFixed(1)} MiB is too small for a context of ` +
        `${ctx} positions of this model; raise --memory-budget or lower --ctx`, rc);
    }
    if (rc < 0) throw guestError("realm_init failed", rc);
    this.tokPtr = guest.alloc(4 * MAX_BATCH);
    this.paramsPtr = guest.alloc(STRUCTS.SampleParams.size);
    this.statsPtr = guest.alloc(STRUCTS.GuestStats.size);
    this.nPast = 0;
    this.loadSeconds = 0;
    /** @type {Generation | null} */
    this.last = null;
  }

  /** Append ids to the KV cache (logits of the last position stay in the guest). @param {number[]} ids */
  eval(ids) {
    this.checkIds(ids);
    for (let lo = 0; lo < ids.length; lo += MAX_BATCH) {
      const chunk = Int32Array.from(ids.slice(lo, lo + MAX_BATCH));
      this.guest.write(this.tokPtr, new Uint8Array(chunk.buffer));
      const rc = this.guest.call("realm_eval", this.tokPtr, chunk.length, EVAL_LAST);
      if (rc === ERR.ERR_OOM) {
        throw guestError(`the guest ran out of its ${(this.memoryBudget / 2 ** 20).toFixed(1)} MiB memory budget while ` +
          `evaluating ${chunk.length} token(s); raise --memory-budget or lower --ctx`, rc);
      }
      if (rc < 0) throw guestError("realm_eval failed", rc);
      this.nPast += chunk.length;
    }
  }

  /**
   * Append ids to the KV cache and return every position's logits, (ids.length × vocab) row-major, as
   * realm/engines/wasm.py's eval(ids, all_logits=True) does: chunks of as many positions as
   * memoryBudget / LOGITS_SHARE bytes of logits hold, with EVAL_ALL.
   * @param {number[]} ids
   */
  evalAll(ids) {
    this.checkIds(ids);
    const out = new Float32Array(ids.length * this.vocab);
    let step = Math.max(1, Math.min(MAX_BATCH, this.logitsStep,
      Math.floor(this.memoryBudget / LOGITS_SHARE / (4 * this.vocab))));
    let lo = 0;
    while (lo < ids.length) {
      const chunk = ids.slice(lo, lo + step);
      this.guest.write(this.tokPtr, new Uint8Array(Int32Array.from(chunk).buffer));
      const rc = this.guest.call("realm_eval", this.tokPtr, chunk.length, EVAL_ALL);
      if (rc === ERR.ERR_OOM && step > 1) { // no room for (step, vocab) logits beside the caches: halve, retry
        step = this.logitsStep = step >> 1;
        continue;
      }
      if (rc === ERR.ERR_OOM) { // last resort: one position, last-position logits only
        this.guest.write(this.tokPtr, new Uint8Array(Int32Array.of(chunk[0]).buffer));
        const rc1 = this.guest.call("realm_eval", this.tokPtr, 1, EVAL_LAST);
        if (rc1 < 0) throw guestError("realm_eval of 1 position failed", rc1);
        this.nPast += 1;
        out.set(this.logits(), lo * this.vocab);
        lo += 1;
        continue;
      }
      if (rc < 0) throw guestError(`realm_eval of ${chunk.length} position(s) with all logits failed`, rc);
      this.nPast += chunk.length;
      const ptr = this.guest.call("realm_logits_ptr") >>> 0;
      out.set(new Float32Array(this.guest.read(ptr, 4 * this.vocab * chunk.length).buffer), lo * this.vocab);
      lo += chunk.length;
    }
    return out;
  }

  /** @param {number[]} ids */
  checkIds(ids) {
    if (!ids.length) throw new GuestError("eval needs at least one token");
    const bad = ids.find((t) => !(Number.isInteger(t) && t >= 0 && t < this.vocab));
    if (bad !== undefined) throw guestError(`token id ${bad} is outside the vocabulary of ${this.vocab}`, ERR.ERR_BAD_TOKEN);
    if (this.nPast + ids.length > this.nCtx) {
      throw guestError(`evaluating ${ids.length} token(s) after ${this.nPast} exceeds the context of ${this.nCtx}`, ERR.ERR_CONTEXT_FULL);
    }
  }

  /** The last position's logits (a copy). */
  logits() {
    const ptr = this.guest.call("realm_logits_ptr") >>> 0;
    return new Float32Array(this.guest.read(ptr, 4 * this.vocab).buffer);
  }

  /** Sample inside the guest: [token, rng state after]. @param {SamplingParams} p @param {bigint} rngState */
  sample(p, rngState) {
    this.guest.write(this.paramsPtr, pack("SampleParams", {
      temperature: p.temperature, top_k: p.topK, top_p: p.topP, min_p: p.minP, repeat_penalty: p.repeatPenalty,
      repeat_last_n: p.repeatLastN, rng_state: rngState, rng_out: 0n,
    }));
    const token = this.guest.call("realm_sample", this.paramsPtr);
    if (token < 0) throw guestError("realm_sample failed", token);
    const out = this.guest.read(this.paramsPtr + fieldOffset("SampleParams", "rng_out"), 8);
    return /** @type {[number, bigint]} */ ([token, new DataView(out.buffer).getBigUint64(0, true)]);
  }

  reset() {
    const rc = this.guest.call("realm_reset");
    if (rc < 0) throw guestError("realm_reset failed", rc);
    this.nPast = 0;
  }

  /** The guest's GuestStats. */
  guestStats() {
    const rc = this.guest.call("realm_stats", this.statsPtr);
    if (rc < 0) throw guestError("realm_stats failed", rc);
    const s = unpack("GuestStats", this.guest.read(this.statsPtr, STRUCTS.GuestStats.size));
    return Object.fromEntries(Object.entries(s).map(([k, v]) => [k, Number(v)]));
  }

  /** Engine counters plus the last generation's timings. */
  get stats() {
    /** @type {Record<string, any>} */
    const out = { engine: "js", closed: this.guest.closed };
    if (!this.guest.closed && !this.guest.trapped) {
      const g = this.guestStats();
      Object.assign(out, {
        bytes_fetched: g.bytes_fetched, host_calls: this.guest.tenant.hostCalls, cache_hits: g.cache_hits,
        cache_misses: g.cache_misses, cache_bytes: g.cache_bytes, peak_memory: Math.max(g.peak_memory, this.guest.memorySize),
        memory_size: this.guest.memorySize, memory_budget: this.memoryBudget, meta_memory_size: this.meta.memorySize,
        threads: 1, compile_ms: round3(1000 * this.guest.compileSeconds), init_ms: round3(1000 * this.initSeconds),
        n_past: this.nPast,
      });
    }
    if (this.last) Object.assign(out, this.last.stats.toJSON());
    return out;
  }

  /** Tokenize with the model's tokenizer (the meta module). @param {string} text @param {{addBos?: boolean, special?: boolean}} [o] */
  tokenize(text, o = {}) {
    return this.meta.tokenize(text, o);
  }

  /** @param {number[]} ids */
  detokenize(ids) {
    return this.meta.detokenize(ids);
  }

  /**
   * Stream a completion of `prompt` (text, or {ids} of already tokenized input).
   * @param {string | {ids: number[]}} prompt @param {GenerateOptions} [options]
   */
  generate(prompt, options = {}) {
    const gen = new Generation(this, prompt, options);
    this.last = gen;
    return gen;
  }

  /** Stop a running call at its next host call; the engine is unusable afterwards. */
  cancel() {
    this.guest.cancel();
  }

  close() {
    this.guest.close();
  }
}

/** @param {number} x */
function round3(x) {
  return Math.round(x * 1000) / 1000;
}

/**
 * @typedef {{temperature: number, topK: number, topP: number, minP: number, repeatPenalty: number, repeatLastN: number, seed: bigint}} SamplingParams
 */

/** realm/sampling.py's SamplingParams.validate. @param {GenerateOptions} o @returns {SamplingParams} */
export function samplingParams(o) {
  const p = {
    temperature: o.temperature ?? 0, topK: o.topK ?? 40, topP: o.topP ?? 0.95, minP: o.minP ?? 0.05,
    repeatPenalty: o.repeatPenalty ?? 1, repeatLastN: o.repeatLastN ?? 64, seed: BigInt(o.seed ?? 0),
  };
  /** @type {[boolean, string][]} */
  const checks = [
    [Number.isFinite(p.temperature) && p.temperature >= 0, "temperature must be >= 0"],
    [Number.isInteger(p.topK) && p.topK >= 0, "top_k must be >= 0 (0 disables it)"],
    [Number.isFinite(p.topP) && p.topP > 0 && p.topP <= 1, "top_p must be in (0, 1]"],
    [Number.isFinite(p.minP) && p.minP >= 0 && p.minP <= 1, "min_p must be in [0, 1]"],
    [Number.isFinite(p.repeatPenalty) && p.repeatPenalty > 0, "repeat_penalty must be > 0"],
    [Number.isInteger(p.repeatLastN) && p.repeatLastN >= 0, "repeat_last_n must be >= 0"],
    [p.seed >= 0n && p.seed < 1n << 64n, "seed must be in [0, 2^64)"],
  ];
  for (const [ok, message] of checks) if (!ok) throw new RealmError(`invalid sampling parameter: ${message}`);
  return p;
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string.
 * @param {string} text @param {string[]} stops */
export function heldBack(text, stops) {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/** Where the first stop string starts in `text` at or after `from`, or -1.
 * @param {string} text @param {string[]} stops @param {number} [from] */
function firstStop(text, stops, from = 0) {
  let hit = -1;
  for (const s of stops) {
    const i = text.indexOf(s, from);
    if (i >= 0 && (hit < 0 || i < hit)) hit = i;
  }
  return hit;
}

export class GenerationStats {
  constructor() {
    this.promptTokens = 0;
    this.generatedTokens = 0;
    this.prefillSeconds = 0;
    this.decodeSeconds = 0; // every eval after the prefill, plus sampling
    this.stopReason = "";
  }

  get prefillTokensPerSecond() {
    return this.prefillSeconds > 0 ? this.promptTokens / this.prefillSeconds : 0;
  }

  get decodeTokensPerSecond() {
    const n = this.generatedTokens - 1; // the first generated token comes from the prefill's logits
    return n > 0 && this.decodeSeconds > 0 ? n / this.decodeSeconds : 0;
  }

  toJSON() {
    return {
      prompt_tokens: this.promptTokens, generated_tokens: this.generatedTokens,
      prefill_seconds: this.prefillSeconds, decode_seconds: this.decodeSeconds,
      prefill_tokens_per_second: this.prefillTokensPerSecond, decode_tokens_per_second: this.decodeTokensPerSecond,
      stop_reason: this.stopReason,
    };
  }
}

/** One completion: async-iterate it for text pieces; afterwards `.text`, `.tokens`, `.stats`. */
export class Generation {
  /** @param {Engine} engine @param {string | {ids: number[]}} prompt @param {GenerateOptions} o */
  constructor(engine, prompt, o) {
    this.engine = engine;
    this.maxTokens = o.maxTokens ?? 256;
    if (!(Number.isInteger(this.maxTokens) && this.maxTokens >= 0)) throw new RealmError("maxTokens must be an integer >= 0");
    this.stop = [...(o.stop ?? [])];
    if (this.stop.some((s) => typeof s !== "string" || !s)) throw new RealmError("stop strings must be non-empty");
    this.stopAfterText = !!o.stopAfterText;
    this.params = samplingParams(o);
    this.special = !!o.special;
    this.reset = o.reset ?? true;
    this.signal = o.signal;
    this.promptIds = typeof prompt === "string" ? engine.tokenize(prompt, { addBos: true, special: this.special }) : [...prompt.ids];
    if (!this.promptIds.length) throw new RealmError("the prompt is empty: nothing to evaluate");
    /** @type {number[]} */
    this.tokens = [];
    this.text = "";
    this.stats = new GenerationStats();
    this.stats.promptTokens = this.promptIds.length;
    this.cancelled = false;
    this.started = false;
  }

  /** Where stop strings may start in `pending` (past the reply's leading whitespace if asked).
   * @param {string} pending */
  stopFrom(pending) {
    if (!this.stopAfterText || this.text.trim()) return 0;
    return pending.length - pending.trimStart().length;
  }

  /** Stop after the current token. */
  cancel() {
    this.cancelled = true;
  }

  async *[Symbol.asyncIterator]() {
    if (this.started) throw new RealmError("a generation can be iterated once");
    this.started = true;
    const e = this.engine, stats = this.stats, stop = this.stop;
    if (this.reset && e.nPast) e.reset();
    if (e.nPast + this.promptIds.length > e.nCtx) {
      throw new RealmError(`the prompt has ${this.promptIds.length} tokens but the context holds ${e.nCtx - e.nPast}; ` +
        "shorten the prompt or raise the context size");
    }
    e.meta.initTokenizer();
    const stopIds = /** @type {Set<number>} */ (e.meta.stopIds);
    e.meta.streamReset();
    let rng = this.params.seed;
    let pending = "";
    let t0 = performance.now();
    e.eval(this.promptIds);
    stats.prefillSeconds = (performance.now() - t0) / 1000;
    t0 = performance.now();
    stats.stopReason = "max_tokens";
    let stringStop = false;
    while (this.tokens.length < this.maxTokens) {
      if (this.cancelled || this.signal?.aborted) {
        stats.stopReason = "cancelled";
        break;
      }
      const [token, next] = e.sample(this.params, rng);
      rng = next;
      if (stopIds.has(token)) {
        stats.stopReason = "eos";
        break;
      }
      this.tokens.push(token);
      stats.generatedTokens = this.tokens.length;
      pending += e.meta.streamFeed(token);
      let keep = 0;
      if (stop.length) {
        const from = this.stopFrom(pending);
        const hit = firstStop(pending, stop, from);
        if (hit >= 0) {
          pending = pending.slice(0, hit);
          stats.stopReason = "stop_string";
          stringStop = true;
          break;
        }
        keep = from < pending.length ? heldBack(pending, stop) : 0;
      }
      if (pending.length > keep) {
        const piece = pending.slice(0, pending.length - keep);
        pending = pending.slice(pending.length - keep);
        this.text += piece;
        stats.decodeSeconds = (performance.now() - t0) / 1000;
        yield piece;
      }
      if (this.tokens.length >= this.maxTokens) break;
      if (e.nPast >= e.nCtx) {
        stats.stopReason = "context";
        break;
      }
      e.eval([token]);
    }
    stats.decodeSeconds = (performance.now() - t0) / 1000;
    if (!stringStop) {
      pending += e.meta.streamFlush();
      if (stop.length) {
        const hit = firstStop(pending, stop, this.stopFrom(pending));
        if (hit >= 0) pending = pending.slice(0, hit);
      }
    }
    if (pending) {
      this.text += pending;
      yield pending;
    }
  }
}
