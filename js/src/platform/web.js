// The browser platform (inside a dedicated Web Worker): models read by byte ranges from the
// origin-private file system with FileSystemSyncAccessHandle.read(<view of wasm memory>, {at}), so
// weights go from the disk cache into guest memory without passing through the JS heap; a picked
// File/Blob (FileReaderSync on slices: slow, used to validate a file before it is copied) as a fallback.
// The wasm modules are fetched from realm/guest/ next to js/ (`python -m realm web` serves both).

import { ModelNotFoundError } from "../errors.js";

/**
 * @typedef {{read(buffer: ArrayBufferView, options?: {at?: number}): number, getSize(): number, close(): void}} SyncHandle
 * @typedef {{kind: "opfs", handle: SyncHandle, name?: string, sha256?: Uint8Array}} OpfsSource
 */

/** @param {OpfsSource | Blob} source @returns {Promise<import("../store.js").RangeReader>} */
export async function openFile(source) {
  if (source && typeof source === "object" && "kind" in source && source.kind === "opfs") {
    const { handle } = source;
    const size = handle.getSize();
    const digest = source.sha256;
    return {
      size,
      name: source.name ?? "model",
      read: (offset, dst) => handle.read(dst, { at: offset }),
      ...(digest ? { digest: async () => digest } : {}),
      close: () => {}, // the worker owns the handle
    };
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) return blobReader(source);
  throw new ModelNotFoundError("the web host opens OPFS files or a picked File");
}

/** A RangeReader over a Blob with FileReaderSync (workers only). @param {Blob} blob */
export function blobReader(blob) {
  const FRS = /** @type {any} */ (globalThis).FileReaderSync;
  if (!FRS) throw new ModelNotFoundError("FileReaderSync is not available here (not in a worker?)");
  const fr = new FRS();
  return {
    size: blob.size,
    name: /** @type {any} */ (blob).name ?? "file",
    /** @param {number} offset @param {Uint8Array} dst */
    read(offset, dst) {
      const buf = new Uint8Array(fr.readAsArrayBuffer(blob.slice(offset, offset + dst.length)));
      dst.set(buf);
      return buf.length;
    },
  };
}

/** @param {"guest" | "meta"} name */
export async function loadWasm(name) {
  const url = new URL(`../../../realm/guest/realm_${name}.wasm`, import.meta.url);
  const r = await fetch(url);
  if (!r.ok) throw new ModelNotFoundError(`cannot fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** @type {import("../engine.js").Platform} */
export const webPlatform = { openFile, loadWasm };
