// Typed errors of the JavaScript host, named like realm/errors.py and realm/host/store.py.
// Library code throws these; only bin/realm.mjs and the web page turn them into messages.

export class RealmError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** A malformed GGUF file (the meta module's message names field/offset/tensor). */
export class GGUFError extends RealmError {}

/** A valid file realm cannot run (architecture, tensor type, tokenizer family). */
export class UnsupportedError extends RealmError {}

/** The model file was not found or cannot be read. */
export class ModelNotFoundError extends RealmError {}

/** A guest or meta module call failed; `code`/`codeName` carry the ABI error code when there is one. */
export class GuestError extends RealmError {
  /**
   * @param {string} message
   * @param {number | null} [code]
   * @param {string | null} [codeName]
   */
  constructor(message, code = null, codeName = null) {
    super(code == null ? message : `${message}: ${codeName} (${code})`);
    this.code = code;
    this.codeName = codeName;
  }
}

/** A guest call ran past its deadline or was cancelled; the instance is unusable afterwards. */
export class InterruptError extends GuestError {}

export class StoreError extends RealmError {}
/** No model with that id (or not one the holder holds). */
export class NoModelError extends StoreError {}
/** The id is already used by different content. */
export class IdConflictError extends StoreError {}
/** A holder's read quota or model-count limit is exhausted. */
export class QuotaError extends StoreError {}
/** A GGUF image handed to the store is malformed. */
export class BadModelError extends StoreError {}
