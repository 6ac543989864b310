// The page: posts requests to the worker (which owns the guest) and renders what comes back.
// It keeps no model bytes and runs no wasm itself.

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
let nextId = 1;
/** @type {Map<number, {resolve: (v: any) => void, reject: (e: Error) => void}>} */
const pending = new Map();
let peakMemory = 0;

/** @param {string} state @param {string} text */
function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

/** @param {string} text */
function showError(text) {
  $("error").textContent = text;
}

/** @param {Record<string, any>} msg @returns {Promise<any>} */
function request(msg) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ ...msg, id });
  });
}

const mib = (/** @type {number} */ n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

worker.onmessage = (/** @type {MessageEvent} */ ev) => {
  const m = ev.data;
  if (m.type === "ready") {
    refresh();
    return;
  }
  if (m.type === "progress") {
    $("progress").textContent = m.phase === "done" ? "" : `${m.phase} ${mib(m.done)} / ${mib(m.total)} (${((100 * m.done) / Math.max(1, m.total)).toFixed(0)}%)`;
    return;
  }
  if (m.type === "piece") {
    $("output").textContent += m.piece;
    peakMemory = Math.max(peakMemory, m.memory);
    const s = $("stats");
    s.dataset.memory = String(m.memory);
    s.dataset.peakMemory = String(peakMemory);
    s.textContent = `${m.tokens} tokens · decode ${m.decodeTps.toFixed(2)} tok/s · prefill ${m.prefillTps.toFixed(1)} tok/s · guest memory ${mib(m.memory)}`;
    return;
  }
  const p = pending.get(m.id);
  if (!p) return;
  pending.delete(m.id);
  if (m.type === "error") p.reject(Object.assign(new Error(m.message), { kind: m.kind }));
  else p.resolve(m);
};
worker.onerror = (/** @type {ErrorEvent} */ ev) => {
  showError(`worker error: ${ev.message}`);
  setStatus("error", "the worker failed; reload the page");
};

/** @param {any[]} models */
function renderModels(models) {
  const ul = $("models");
  ul.replaceChildren();
  for (const m of models) {
    const li = document.createElement("li");
    li.dataset.key = m.key;
    li.textContent = `${m.name} (${mib(m.size)}${m.architecture ? ", " + m.architecture : ""}) `;
    const use = document.createElement("button");
    use.textContent = "Use";
    use.onclick = () => loadModel(m.key);
    const rm = document.createElement("button");
    rm.textContent = "Remove";
    rm.className = "remove";
    rm.onclick = async () => {
      try {
        const r = await request({ type: "remove", key: m.key });
        renderModels(r.models);
        if ($("status").dataset.key === m.key) setStatus("idle", "pick a model");
      } catch (e) {
        showError(/** @type {Error} */ (e).message);
      }
    };
    li.append(use, " ", rm);
    ul.append(li);
  }
  if (!models.length) ul.innerHTML = '<li class="muted">none yet</li>';
}

async function refresh() {
  try {
    const r = await request({ type: "list" });
    renderModels(r.models);
    setStatus("idle", r.models.length ? "pick a stored model or add one" : "add a .gguf model");
  } catch (e) {
    showError(/** @type {Error} */ (e).message);
    setStatus("idle", "OPFS is unavailable here");
  }
}

/** @param {string} key */
async function loadModel(key) {
  showError("");
  setStatus("loading", "loading the model…");
  ($("run")).setAttribute("disabled", "");
  try {
    const r = await request({ type: "load", key });
    const s = $("status");
    s.dataset.key = key;
    setStatus("ready", `ready: ${r.name}`);
    $("run").removeAttribute("disabled");
  } catch (e) {
    showError(/** @type {Error} */ (e).message);
    setStatus("idle", "could not load the model");
  }
}

$("file").addEventListener("change", async () => {
  const input = /** @type {HTMLInputElement} */ ($("file"));
  const file = input.files?.[0];
  if (!file) return;
  showError("");
  setStatus("importing", `checking and copying ${file.name}…`);
  try {
    const r = await request({ type: "import", file });
    const list = await request({ type: "list" });
    renderModels(list.models);
    await loadModel(r.key);
  } catch (e) {
    showError(/** @type {Error} */ (e).message);
    setStatus("idle", "that file was not added");
  } finally {
    input.value = "";
  }
});

$("run").addEventListener("click", async () => {
  showError("");
  $("output").textContent = "";
  peakMemory = 0;
  setStatus("generating", "generating…");
  $("run").setAttribute("disabled", "");
  $("stop").removeAttribute("disabled");
  try {
    const options = {
      maxTokens: Number(/** @type {HTMLInputElement} */ ($("max-tokens")).value),
      temperature: Number(/** @type {HTMLInputElement} */ ($("temperature")).value),
    };
    const r = await request({ type: "generate", prompt: /** @type {HTMLTextAreaElement} */ ($("prompt")).value, options });
    const s = r.stats;
    const el = $("stats");
    el.dataset.peakMemory = String(Math.max(peakMemory, s.peak_memory));
    el.dataset.tokens = JSON.stringify(r.tokens);
    el.textContent = `${s.generated_tokens} tokens · decode ${s.decode_tokens_per_second.toFixed(2)} tok/s · prefill ` +
      `${s.prefill_tokens_per_second.toFixed(1)} tok/s · peak guest memory ${mib(s.peak_memory)} of ${mib(s.memory_budget)} · ` +
      `${mib(s.bytes_fetched)} fetched · stop: ${s.stop_reason}`;
    setStatus("done", "done");
  } catch (e) {
    showError(/** @type {Error} */ (e).message);
    setStatus("idle", "generation failed");
  } finally {
    $("run").removeAttribute("disabled");
    $("stop").setAttribute("disabled", "");
  }
});

$("stop").addEventListener("click", () => request({ type: "cancel" }));
