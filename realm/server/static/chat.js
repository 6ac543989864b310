// The chat page of `realm serve`: streams /v1/chat/completions (server-sent events) into the page.
// No build step, no dependencies; text goes in with textContent only (never parsed as HTML).

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const history = /** @type {{role: string, content: string}[]} */ ([]);
let controller = /** @type {AbortController | null} */ (null);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = /** @type {HTMLInputElement} */ ($("api-key")).value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

function status(text) { $("status").textContent = text; }

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return `HTTP ${response.status}`; }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { status(await errorText(response)); return; }
  const select = /** @type {HTMLSelectElement} */ ($("model"));
  select.replaceChildren();
  for (const m of (await response.json()).data) {
    const option = document.createElement("option");
    option.value = option.textContent = m.id;
    select.appendChild(option);
  }
  status("ready");
}

/** Yield the JSON payload of each `data:` event of an SSE response body. */
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  controller = new AbortController();
  /** @type {HTMLButtonElement} */ ($("send")).disabled = true;
  /** @type {HTMLButtonElement} */ ($("stop")).disabled = false;
  status("generating…");
  const t0 = performance.now();
  let n = 0;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: /** @type {HTMLSelectElement} */ ($("model")).value,
        messages: history,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number(/** @type {HTMLInputElement} */ ($("max-tokens")).value) || 128,
        temperature: Number(/** @type {HTMLInputElement} */ ($("temperature")).value) || 0,
      }),
    });
    if (!response.ok || !response.body) throw new Error(await errorText(response));
    for await (const chunk of events(response.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) n = chunk.usage.completion_tokens;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) { out.textContent += delta; out.scrollIntoView({ block: "end" }); }
    }
    history.push({ role: "assistant", content: out.textContent ?? "" });
    status(`done: ${n} tokens in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    out.dataset.done = "1";
  } catch (e) {
    if (controller.signal.aborted) { status("stopped"); out.dataset.done = "1"; }
    else { out.className = "msg error"; out.textContent = String(e.message || e); status("error"); out.dataset.done = "1"; }
    history.pop();
  } finally {
    controller = null;
    /** @type {HTMLButtonElement} */ ($("send")).disabled = false;
    /** @type {HTMLButtonElement} */ ($("stop")).disabled = true;
  }
}

$("chat").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = /** @type {HTMLTextAreaElement} */ ($("prompt"));
  const text = prompt.value.trim();
  if (!text || controller) return;
  prompt.value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("chat").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller?.abort());
$("api-key").addEventListener("change", loadModels);
loadModels().catch((e) => status(String(e)));
