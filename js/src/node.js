// The Node entry point: the core with the Node platform (fs range reads) filled in.
import { createEngine as createCoreEngine } from "./engine.js";
import { nodePlatform, defaultModelPath } from "./platform/node.js";

export * from "./index.js";
export { nodePlatform, defaultModelPath };

/**
 * `createEngine({model})` with the Node platform; `model` defaults to the Python package's default model.
 * @param {Partial<import("./engine.js").EngineOptions>} [options]
 */
export function createEngine(options = {}) {
  return createCoreEngine({ ...options, model: options.model ?? defaultModelPath(), platform: options.platform ?? nodePlatform });
}
