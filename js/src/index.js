// The platform-independent host core (Node and browser alike); see engine.js for the API.
export { createEngine, Engine, Generation, GenerationStats, samplingParams, heldBack, MAX_BATCH, DEFAULT_CTX } from "./engine.js";
export { ModelStore, StoredModel, bytesReader, contentId, readerDigest } from "./store.js";
export { MetaLoader, MetaModel } from "./meta.js";
export { Guest, DEFAULT_BUDGET, DEFAULT_TIMEOUT } from "./guest.js";
export { ERR, codeName, pack, unpack, STRUCTS, TABLE, Tenant } from "./abi.js";
export * from "./errors.js";
