// The Web Worker of the browser host: it owns the guest and the meta module (the page only posts
// messages). A picked .gguf is validated by the meta module, then copied once into the origin-private
// file system (OPFS) in chunks with progress and kept for later visits; a stored model is opened with a
// FileSystemSyncAccessHandle whose reads land straight in guest memory. Every request answers with
// its result or one {type: "error"} message; a failure never takes the worker down.
//
// Requests: {type: "list"} | {type: "import", file} | {type: "remove", key} | {type: "load", key, memoryBudget?}
//           | {type: "generate", prompt, options} | {type: "cancel"}

import { createEngine, defaultStore } from "../src/engine.js";
import { MetaLoader } from "../src/meta.js";
import { Sha256 } from "../src/sha256.js";
import { RealmError } from "../src/errors.js";
import { webPlatform } from "../src/platform/web.js";

const DIR = "realm-models";
const COPY_CHUNK = 8 << 20;
const PROBE_BLOCK = 1 << 20;

/** @type {any} */
const self_ = globalThis;
/** @param {any} msg */
const post = (msg) => self_.postMessage(msg);

/** @type {{engine: import("../src/engine.js").Engine, handle: any, key: string} | null} */
let current = null;
/** @type {import("../src/engine.js").Generation | null} */
let running = null;
/** @type {Promise<MetaLoader> | null} */
let metaLoader = null;
/** @type {Set<string>} keys being copied right now (not orphans) */
const importing = new Set();

async function dir() {
  const root = await navigator.storage.getDirectory();
  return /** @type {any} */ (root).getDirectoryHandle(DIR, { create: true });
}

/** @param {Uint8Array} b */
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

async function listModels() {
  const d = await dir();
  /** @type {any[]} */
  const models = [];
  /** @type {Set<string>} */
  const files = new Set();
  for await (const [name, h] of d.entries()) {
    if (h.kind !== "file") continue;
    files.add(name);
  }
  for (const name of files) {
    if (!name.endsWith(".json")) continue;
    const key = name.slice(0, -5);
    try {
      const info = JSON.parse(await (await (await d.getFileHandle(name)).getFile()).text());
      if (!files.has(key + ".gguf")) throw new Error("data missing");
      models.push({ key, ...info });
    } catch {
      await d.removeEntry(name).catch(() => {});
    }
  }
  for (const name of files) { // a copy interrupted before its description was written
    const key = name.slice(0, -5);
    if (name.endsWith(".gguf") && !files.has(key + ".json") && !importing.has(key)) await d.removeEntry(name).catch(() => {});
  }
  models.sort((a, b) => a.stored - b.stored);
  return models;
}

/** A reader over a picked File with FileReaderSync in 1 MiB blocks (the header is read in small pieces). @param {File} file */
function probeReader(file) {
  const fr = new self_.FileReaderSync();
  let blockAt = -1;
  let block = new Uint8Array(0);
  return {
    size: file.size,
    name: file.name,
    /** @param {number} offset @param {Uint8Array} dst */
    read(offset, dst) {
      let done = 0;
      while (done < dst.length && offset + done < file.size) {
        const at = Math.floor((offset + done) / PROBE_BLOCK) * PROBE_BLOCK;
        if (at !== blockAt) {
          block = new Uint8Array(fr.readAsArrayBuffer(file.slice(at, at + PROBE_BLOCK)));
          blockAt = at;
        }
        const from = offset + done - at;
        const n = Math.min(dst.length - done, block.length - from);
        if (n <= 0) break;
        dst.set(block.subarray(from, from + n), done);
        done += n;
      }
      return done;
    },
  };
}

function meta() {
  if (!metaLoader) metaLoader = webPlatform.loadWasm("meta").then((b) => new MetaLoader(b).ready());
  return metaLoader;
}

/** The meta module's verdict on a file before it is copied: throws a RealmError naming the problem. @param {File} file */
async function validate(file) {
  const m = (await meta()).open(probeReader(file));
  if (typeof m.config === "number") throw new RealmError(`${file.name} cannot run: ${m.configError ?? "unusable config"}`);
  if (typeof m.ex.meta_tokenizer_init === "function") m.initTokenizer();
  return { modelName: m.getString("general.name"), architecture: m.getString("general.architecture") };
}

/** @param {File} file */
async function importModel(file) {
  if (!(file instanceof Blob)) throw new RealmError("import needs a File");
  post({ type: "progress", phase: "checking", done: 0, total: file.size });
  const described = await validate(file);
  const d = await dir();
  const key = `m-${Date.now()}`;
  importing.add(key);
  try {
    return await copyIn(file, d, key, described);
  } finally {
    importing.delete(key);
  }
}

/** @param {File} file @param {any} d @param {string} key @param {Record<string, any>} described */
async function copyIn(file, d, key, described) {
  const fh = await d.getFileHandle(key + ".gguf", { create: true });
  const handle = await fh.createSyncAccessHandle();
  const sha = new Sha256();
  try {
    handle.truncate(0);
    let last = 0;
    for (let off = 0; off < file.size; off += COPY_CHUNK) {
      const buf = new Uint8Array(await file.slice(off, off + COPY_CHUNK).arrayBuffer());
      let written = 0;
      while (written < buf.length) written += handle.write(buf.subarray(written), { at: off + written });
      sha.update(buf);
      const now = performance.now();
      if (now - last > 100) {
        post({ type: "progress", phase: "copying", done: off + buf.length, total: file.size });
        last = now;
      }
    }
    handle.flush();
  } catch (e) {
    handle.close();
    await d.removeEntry(key + ".gguf").catch(() => {});
    throw e;
  }
  handle.close();
  const sha256 = hex(sha.digest());
  const dup = (await listModels()).find((m) => m.sha256 === sha256);
  if (dup) {
    await d.removeEntry(key + ".gguf");
    post({ type: "progress", phase: "done", done: file.size, total: file.size });
    return { key: dup.key, duplicate: true };
  }
  const info = { name: file.name, size: file.size, sha256, stored: Date.now(), ...described };
  const jh = await d.getFileHandle(key + ".json", { create: true });
  const w = await jh.createWritable();
  await w.write(JSON.stringify(info));
  await w.close();
  post({ type: "progress", phase: "done", done: file.size, total: file.size });
  return { key, duplicate: false };
}

function unload() {
  if (!current) return;
  try {
    current.engine.close();
  } finally {
    current.handle.close();
    current = null;
  }
}

/** @param {string} key */
async function removeModel(key) {
  if (current?.key === key) unload();
  const d = await dir();
  await d.removeEntry(key + ".json").catch(() => {});
  await d.removeEntry(key + ".gguf").catch(() => {});
}

/** @param {string} key @param {number | undefined} memoryBudget */
async function load(key, memoryBudget) {
  unload();
  const models = await listModels();
  const m = models.find((x) => x.key === key);
  if (!m) throw new RealmError(`no stored model ${key}`);
  const d = await dir();
  const handle = await (await d.getFileHandle(key + ".gguf")).createSyncAccessHandle();
  try {
    const sha256 = Uint8Array.from(/** @type {string} */ (m.sha256).match(/../g) ?? [], (h) => parseInt(h, 16));
    await defaultStore(webPlatform);
    const engine = await createEngine({ model: await webPlatform.openFile({ kind: "opfs", handle, name: m.name, sha256 }), platform: webPlatform, memoryBudget });
    current = { engine, handle, key };
  } catch (e) {
    handle.close();
    throw e;
  }
  return { key, name: m.name, stats: current.engine.stats };
}

/** @param {string} prompt @param {any} options */
async function generate(prompt, options) {
  if (!current) throw new RealmError("no model loaded: pick a .gguf file or a stored model first");
  const engine = current.engine;
  const gen = engine.generate(prompt, options ?? {});
  running = gen;
  try {
    for await (const piece of gen) {
      const s = gen.stats;
      post({ type: "piece", piece, tokens: s.generatedTokens, decodeTps: s.decodeTokensPerSecond,
        prefillTps: s.prefillTokensPerSecond, memory: engine.guest.memorySize });
      await new Promise((r) => setTimeout(r, 0)); // let a cancel message in
    }
  } finally {
    running = null;
  }
  return { text: gen.text, tokens: gen.tokens, stats: engine.stats };
}

/** @param {any} msg */
async function handle(msg) {
  switch (msg.type) {
    case "list": return { models: await listModels() };
    case "import": return importModel(msg.file);
    case "remove": await removeModel(msg.key); return { models: await listModels() };
    case "load": return load(msg.key, msg.memoryBudget);
    case "generate": return generate(msg.prompt, msg.options);
    case "cancel": running?.cancel(); return {};
    default: throw new RealmError(`unknown request ${JSON.stringify(msg.type)}`);
  }
}

self_.onmessage = async (/** @type {MessageEvent} */ ev) => {
  const msg = ev.data ?? {};
  try {
    const result = await handle(msg);
    post({ type: "result", id: msg.id, request: msg.type, ...result });
  } catch (e) {
    if (current?.engine.guest.trapped) unload(); // a trapped guest cannot continue; the next load starts afresh
    const message = e instanceof Error ? e.message : String(e);
    post({ type: "error", id: msg.id, request: msg.type, message, kind: e instanceof Error ? e.name : "Error" });
  }
};
post({ type: "ready" });
