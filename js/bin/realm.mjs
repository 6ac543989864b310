#!/usr/bin/env node
// `node js/bin/realm.mjs run [PROMPT] --model PATH`: the Node host's command line, with the main
// options of `python -m realm run`. The only file of the Node host that prints or exits: every
// RealmError becomes one line on stderr and exit code 1; usage errors exit with 2.

import { parseArgs } from "node:util";
import fs from "node:fs";
import { createEngine, defaultModelPath } from "../src/node.js";
import { RealmError } from "../src/errors.js";

const DEFAULT_PROMPT = "What is the capital of France?";
const USAGE = `usage: node js/bin/realm.mjs run [PROMPT] [options]

Generate a completion of PROMPT (default: "${DEFAULT_PROMPT}"; "-" reads stdin) with realm's
WebAssembly guest hosted by Node.js. With the built-in default prompt (and no --stop), generation
ends at the first blank line after the answer, as in \`python -m realm run\`.

options:
  -m, --model PATH        GGUF file (default: the model the Python package assembled in ~/.cache/realm)
  -n, --max-tokens N      tokens to generate (default 256)
  --temperature T         0 = greedy (default 0)
  --top-k K               0 = off (default 40)
  --top-p P               (default 0.95)
  --min-p P               (default 0.05)
  --repeat-penalty R      (default 1.0)
  --repeat-last-n N       (default 64)
  --seed S                (default 0)
  --stop TEXT             stop when TEXT is generated (repeatable)
  --special               parse special-token text such as <start_of_turn> in the prompt
  --prompt-ids IDS        comma-separated token ids instead of PROMPT (no tokenizing)
  --ctx N                 context length (default: min(model's, 2048))
  --memory-budget SIZE    cap on the guest's linear memory (default 64MiB)
  --timeout SECONDS       deadline of one guest call (default: 60 s per 512 MiB of weights)
  --json                  print one JSON object with text, token ids and stats
  -v, --verbose           print timings, guest memory and bytes fetched to stderr
  -h, --help`;

class UsageError extends Error {}

/** @param {string} name @param {string | undefined} v @param {number} lo @param {number} hi @param {boolean} [integer] */
function num(name, v, lo, hi, integer = false) {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (!Number.isFinite(x) || (integer && !Number.isInteger(x)) || x < lo || x > hi) {
    throw new UsageError(`--${name} ${v}: expected ${integer ? "an integer" : "a number"} in [${lo}, ${hi}]`);
  }
  return x;
}

/** `64M`, `64MiB`, `1G`, `1048576`: binary units. @param {string} v */
export function byteSize(v) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b)?\s*$/i.exec(v);
  if (!m) throw new UsageError(`--memory-budget ${v}: not a size like 64M, 512MiB or 1G`);
  const n = Math.floor(Number(m[1]) * /** @type {Record<string, number>} */ ({ "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 })[m[2].toLowerCase()]);
  if (n < 2 ** 20 || n > 4 * 2 ** 30) throw new UsageError(`--memory-budget ${v}: outside [1 MiB, 4 GiB]`);
  return n;
}

/** @param {string[]} argv */
function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: "string", short: "m" },
      "max-tokens": { type: "string", short: "n" },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      "min-p": { type: "string" },
      "repeat-penalty": { type: "string" },
      "repeat-last-n": { type: "string" },
      seed: { type: "string" },
      stop: { type: "string", multiple: true },
      special: { type: "boolean" },
      "prompt-ids": { type: "string" },
      ctx: { type: "string" },
      "memory-budget": { type: "string" },
      timeout: { type: "string" },
      json: { type: "boolean" },
      verbose: { type: "boolean", short: "v" },
      help: { type: "boolean", short: "h" },
    },
  });
  return { values, positionals };
}

/** @param {Record<string, any>} s */
function printStats(s) {
  const rows = [
    ["load duration", `${s.load_seconds.toFixed(3)}s`],
    ["prompt eval count", `${s.prompt_tokens} token(s)`],
    ["prompt eval duration", `${s.prefill_seconds.toFixed(3)}s`],
    ["prompt eval rate", `${s.prefill_tokens_per_second.toFixed(2)} tokens/s`],
    ["eval count", `${s.generated_tokens} token(s)`],
    ["eval duration", `${s.decode_seconds.toFixed(3)}s`],
    ["eval rate", `${s.decode_tokens_per_second.toFixed(2)} tokens/s`],
    ["stop reason", s.stop_reason],
    ["bytes fetched", (s.bytes_fetched ?? 0).toLocaleString("en")],
    ["peak guest memory", `${((s.peak_memory ?? 0) / 2 ** 20).toFixed(1)} MiB of ${((s.memory_budget ?? 0) / 2 ** 20).toFixed(1)} MiB`],
    ["meta module memory", `${((s.meta_memory_size ?? 0) / 2 ** 20).toFixed(1)} MiB`],
    ["host calls", (s.host_calls ?? 0).toLocaleString("en")],
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  for (const [k, v] of rows) process.stderr.write(`${(k + ":").padEnd(width)} ${v}\n`);
}

/** @param {string[]} argv */
async function run(argv) {
  const { values: o, positionals } = parse(argv);
  if (o.help) {
    process.stdout.write(USAGE + "\n");
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`one PROMPT expected, got ${positionals.length}: quote it`);
  let prompt = positionals[0];
  let stop = o.stop ?? [];
  let stopAfterText = false;
  if (prompt === undefined && o["prompt-ids"] === undefined) {
    // realm/cli.py: the default model is a base model and would go on with more questions
    prompt = DEFAULT_PROMPT;
    if (!stop.length) [stop, stopAfterText] = [["\n\n"], true];
  } else if (prompt === "-") {
    prompt = fs.readFileSync(0, "utf8");
  }
  /** @type {string | {ids: number[]}} */
  let input = prompt;
  if (o["prompt-ids"] !== undefined) {
    if (positionals.length) throw new UsageError("give PROMPT or --prompt-ids, not both");
    const ids = o["prompt-ids"].split(",").filter((x) => x.trim()).map((x) => num("prompt-ids", x.trim(), 0, 2 ** 31 - 1, true));
    if (!ids.length) throw new UsageError("--prompt-ids: give comma-separated token ids");
    input = { ids: /** @type {number[]} */ (ids) };
  } else if (!prompt) {
    throw new RealmError("the prompt is empty");
  }
  const seedText = o.seed ?? "0";
  if (!/^\d+$/.test(seedText) || BigInt(seedText) >= 1n << 64n) throw new UsageError(`--seed ${seedText}: expected an integer in [0, 2^64)`);
  const model = o.model ?? defaultModelPath();
  const t0 = performance.now();
  const engine = await createEngine({
    model,
    memoryBudget: o["memory-budget"] === undefined ? undefined : byteSize(o["memory-budget"]),
    nCtx: num("ctx", o.ctx, 1, 1 << 20, true),
    timeout: num("timeout", o.timeout, 0, 1e6),
  });
  const loadSeconds = (performance.now() - t0) / 1000;
  try {
    const gen = engine.generate(input, {
      maxTokens: num("max-tokens", o["max-tokens"], 0, 1_000_000, true) ?? 256,
      temperature: num("temperature", o.temperature, 0, 100),
      topK: num("top-k", o["top-k"], 0, 2 ** 31 - 1, true),
      topP: num("top-p", o["top-p"], Number.MIN_VALUE, 1),
      minP: num("min-p", o["min-p"], 0, 1),
      repeatPenalty: num("repeat-penalty", o["repeat-penalty"], Number.MIN_VALUE, 100),
      repeatLastN: num("repeat-last-n", o["repeat-last-n"], 0, 2 ** 31 - 1, true),
      seed: BigInt(seedText),
      stop,
      stopAfterText,
      special: !!o.special,
    });
    for await (const piece of gen) if (!o.json) process.stdout.write(piece);
    const stats = { ...engine.stats, load_seconds: loadSeconds };
    if (o.json) {
      process.stdout.write(JSON.stringify({
        model, engine: "node", prompt: typeof input === "string" ? input : null, prompt_ids: gen.promptIds,
        text: gen.text, tokens: gen.tokens, stats,
      }) + "\n");
    } else {
      process.stdout.write("\n");
    }
    if (o.verbose) printStats(stats);
  } finally {
    engine.close();
  }
  return 0;
}

async function main() {
  const [cmd, ...rest] = process.argv.slice(2);
  try {
    if (cmd === "run") return await run(rest);
    if (cmd === undefined || cmd === "-h" || cmd === "--help") {
      process.stdout.write(USAGE + "\n");
      return cmd === undefined ? 2 : 0;
    }
    throw new UsageError(`unknown command ${JSON.stringify(cmd)} (try: run)`);
  } catch (e) {
    if (e instanceof UsageError || (e instanceof TypeError && /** @type {any} */ (e).code?.startsWith?.("ERR_PARSE_ARGS"))) {
      process.stderr.write(`realm: usage error: ${e.message}\n`);
      return 2;
    }
    if (e instanceof RealmError) {
      process.stderr.write(`realm: error: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

process.exitCode = await main();
