// The generation loop (engine.js Generation) over a scripted engine: stop strings, held-back text and
// `stopAfterText` (the CLI's default-prompt stop, realm/generate.py's stop_after_text) without a model.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Generation } from "../src/engine.js";

const EOS = 0;

/** An engine double whose "sampler" replays `pieces` (token i+1 decodes to pieces[i]), then EOS.
 * @param {string[]} pieces */
function scripted(pieces) {
  let step = 0;
  return /** @type {any} */ ({
    nPast: 0, nCtx: 1 << 20,
    reset() { this.nPast = 0; },
    /** @param {number[]} ids */
    eval(ids) { this.nPast += ids.length; },
    sample() { step += 1; return [step <= pieces.length ? step : EOS, 0n]; },
    meta: {
      stopIds: new Set([EOS]),
      initTokenizer() {}, streamReset() {}, streamFlush: () => "",
      /** @param {number} t */
      streamFeed: (t) => pieces[t - 1],
    },
  });
}

/** @param {string[]} pieces @param {import("../src/engine.js").GenerateOptions} o */
async function run(pieces, o) {
  const gen = new Generation(scripted(pieces), { ids: [1] }, o);
  const streamed = [];
  for await (const piece of gen) streamed.push(piece);
  assert.equal(streamed.join(""), gen.text, "the streamed pieces are the text");
  return gen;
}

const ANSWER = ["\n", "\n", "The capital", " is Paris", ".", "\n", "\n", "Q:", " more"];

test("stopAfterText: a blank line before the answer is kept, the one after it stops", async () => {
  const gen = await run(ANSWER, { stop: ["\n\n"], stopAfterText: true });
  assert.equal(gen.text, "\n\nThe capital is Paris.");
  assert.equal(gen.stats.stopReason, "stop_string");
  assert.equal(gen.tokens.length, 7);
});

test("without stopAfterText the leading blank line stops at once", async () => {
  const gen = await run(ANSWER, { stop: ["\n\n"] });
  assert.equal(gen.text, "");
  assert.equal(gen.stats.stopReason, "stop_string");
  assert.equal(gen.tokens.length, 2);
});

test("no stop strings: everything up to EOS", async () => {
  const gen = await run(ANSWER, {});
  assert.equal(gen.text, ANSWER.join(""));
  assert.equal(gen.stats.stopReason, "eos");
});

test("a stop string split across tokens is held back, then cut", async () => {
  const gen = await run(["Paris", ". ", "EN", "D here"], { stop: ["END"] });
  assert.equal(gen.text, "Paris. ");
  assert.equal(gen.stats.stopReason, "stop_string");
});

test("whitespace-only replies never stop under stopAfterText; maxTokens ends them", async () => {
  const gen = await run(["\n", "\n\n", " ", "\n\n"], { stop: ["\n\n"], stopAfterText: true, maxTokens: 3 });
  assert.equal(gen.text, "\n\n\n ");
  assert.equal(gen.stats.stopReason, "max_tokens");
});
