"""`python -m realm serve` as a separate process under bad input: every request gets its 4xx in
OpenAI's error shape, no traceback reaches a client (nor the server's log), the server keeps
serving, and nothing is written to disk.

The server runs with its working directory and TMPDIR in a fresh directory whose every file
(name, size, mtime) is recorded once it is up and compared at the end; the GGUFs whose chat
templates try to leave the sandbox aim their writes at that directory and at /tmp. The models are
small synthetic ones, so the whole module takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from realm.host.runtime import default_guest_path  # noqa: E402
from realm.quants import GGMLType  # noqa: E402
from synth import make_model  # noqa: E402

if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0000001"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
HI = [{"role": "user", "content": "hello world"}]
START_TIMEOUT = 120.0


def _escapes(target: Path) -> dict[str, str]:
    """Chat templates that try to write `target` (or read a file) from inside the renderer."""
    t = str(target)
    return {
        "escape_os": "{{ cycler.__init__.__globals__.os.system('touch " + t + "-os') }}" + TEMPLATE,
        "escape_open": "{{ lipsum.__globals__['__builtins__']['open']('" + t + "-open', 'w').write('x') }}" + TEMPLATE,
        "escape_import": "{% import 'os' as os %}{{ os.system('touch " + t + "-import') }}" + TEMPLATE,
        "escape_include": "{% include '/etc/passwd' %}" + TEMPLATE,
    }


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


class ServerProcess:
    def __init__(self, args: list[str], cwd: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "realm", "serve", *args], cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            m = re.search(r"serving .* on (http://127\.0\.0\.1:(\d+))", line)
            if m and int(m.group(2)) > 0:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float) -> str:
        self._ready.wait(timeout)
        assert self.url, "the server did not start:\n" + "".join(self.lines)
        return self.url

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("bad-input-models")
    work = tmp_path_factory.mktemp("bad-input-cwd")
    (work / "tmp").mkdir()
    kw = dict(arch="llama", qtype=GGMLType.Q8_0, dim=64, hidden_dim=128, head_dim=16, context_length=512)
    specs = [f"tiny={make_model(models_dir / 'tiny.gguf', chat_template=TEMPLATE, **kw)}"]
    for i, (name, template) in enumerate(sorted(_escapes(work / "escaped").items())):
        specs.append(f"{name}={make_model(models_dir / f'{name}.gguf', chat_template=template, seed=i + 1, **kw)}")
    keys = models_dir / "keys"
    keys.write_text(f"{KEY} tester max_tokens=64\n")
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "PYTHONPATH": str(ROOT)}
    args = [a for spec in specs for a in ("-m", spec)]
    args += ["--port", "0", "--api-key-file", str(keys), "--parallel", "2", "--max-queue", "4",
             "--log-level", "warning"]
    srv = ServerProcess(args, work, env)
    try:
        url = srv.wait_ready(START_TIMEOUT)
        yield url, work, srv
    finally:
        srv.stop()


def _check_error(r: httpx.Response, status: int, what: str):
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"}, (what, body)
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"], (what, err)
    for leak in ("Traceback", 'File "', "site-packages", "root:x:0:0"):
        assert leak not in r.text, (what, r.text[:300])


def _big_chunks(n_bytes: int, prefix: bytes):
    yield prefix
    left = n_bytes
    while left > 0:
        yield b"x" * min(left, 1 << 20)
        left -= 1 << 20


def test_bad_input_gets_its_4xx_and_the_server_keeps_serving_and_writes_nothing(served):
    url, work, srv = served
    before = _snapshot(work)
    assert not any(work.rglob("escaped*"))
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    ok = c.completions.create(model="tiny", prompt="hello", max_tokens=4, temperature=0)
    assert ok.usage.completion_tokens == 4

    ten_mb = "x" * (10 << 20)
    cases = []
    for path in ("/v1/completions", "/v1/chat/completions"):
        chat = path.endswith("chat/completions")
        good = {"model": "tiny", **({"messages": HI} if chat else {"prompt": "hello"}), "max_tokens": 2}
        cases += [
            (path, dict(content=b"{not json"), 400, "malformed JSON"),
            (path, dict(content=b'{"model": "tiny", "prompt": "x"'), 400, "truncated JSON"),
            (path, dict(content=b"\xff\xfe\x00\x01"), 400, "not UTF-8"),
            (path, dict(content=b"[" * 100_000), 400, "deeply nested JSON"),
            (path, dict(content=b'["model", "tiny"]'), 400, "a JSON array"),
            (path, dict(files={"f": ("a.txt", b"x" * 2000)}), 400, "a multipart upload"),
            (path, dict(json={**good, "model": 5}), 422, "model of the wrong type"),
            (path, dict(json={**good, "temperature": "hot"}), 422, "temperature of the wrong type"),
            (path, dict(json={**good, "temperature": True}), 422, "a boolean temperature"),
            (path, dict(json={**good, "max_tokens": "many"}), 422, "max_tokens of the wrong type"),
            (path, dict(json={**good, "stream": "yes"}), 422, "stream of the wrong type"),
            (path, dict(json={**good, "stop": [1, 2]}), 422, "stop of the wrong type"),
            (path, dict(json={**good, "max_tokens": 10 ** 9}), 422, "max_tokens of 10^9"),
            (path, dict(json={**good, "max_tokens": 65}), 400, "max_tokens past the key's limit"),
            (path, dict(json={**good, "model": "gpt-4"}), 404, "an unknown model"),
            (path, dict(json={**good, **({"messages": [{"role": "user", "content": ten_mb}]} if chat
                                        else {"prompt": ten_mb})}), 413, "a 10 MB prompt"),
            (path, dict(content=_big_chunks(10 << 20, b'{"model": "tiny", "prompt": "')), 413,
             "a 10 MB prompt, chunked (no Content-Length)"),
        ]
        if chat:
            cases += [(path, dict(json={**good, "messages": "hi"}), 422, "messages of the wrong type"),
                      (path, dict(json={**good, "messages": [{"role": "wizard", "content": "x"}]}), 422, "a bad role")]
            cases += [(path, dict(json={**good, "model": name}), 400, f"the {name} template")
                      for name in sorted(_escapes(work))]
        else:
            cases += [(path, dict(json={**good, "prompt": [1, 2, 3]}), 422, "a prompt of token ids")]
    for path, kwargs, status, what in cases:
        r = httpx.post(url + path, headers={**AUTH, **kwargs.pop("headers", {})}, timeout=60, **kwargs)
        _check_error(r, status, what)

    # keys: missing, wrong, another scheme, not ASCII
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
    for headers, what in [({}, "no key"), ({"Authorization": "Bearer wrong-key-000001"}, "a wrong key"),
                          ({"Authorization": f"Basic {KEY}"}, "the Basic scheme"),
                          ({"Authorization": b"Bearer \xff\xfe-key-\x80"}, "a key that is not ASCII"),
                          ({"Authorization": f"Bearer {KEY}x"}, "the key with one more character")]:
        r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=30)
        _check_error(r, 401, what)
        assert r.json()["error"]["type"] == "authentication_error"

    # the same through the openai client: each its typed exception
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong-key-000001", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    with pytest.raises(openai.APIStatusError) as err:
        c.completions.create(model="tiny", prompt=ten_mb, max_tokens=2)
    assert err.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError):
        c.completions.create(model="tiny", prompt="hi", max_tokens=10 ** 9)
    for name in sorted(_escapes(work)):
        with pytest.raises(openai.BadRequestError, match="chat template"):
            c.chat.completions.create(model=name, messages=HI, max_tokens=2)
        # a model whose template is hostile still completes plain prompts
        assert c.completions.create(model=name, prompt="hello", max_tokens=2, temperature=0).usage.completion_tokens == 2

    # still serving, with the same answer as before the bad input
    assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
    again = c.completions.create(model="tiny", prompt="hello", max_tokens=4, temperature=0)
    assert again.choices[0].text == ok.choices[0].text
    assert c.chat.completions.create(model="tiny", messages=HI, max_tokens=3, temperature=0).usage.completion_tokens == 3

    # nothing written: not in the server's working directory or TMPDIR, not where the templates aimed
    assert _snapshot(work) == before
    assert not list((work / "tmp").iterdir())
    assert not any(work.rglob("escaped*"))
    assert not any(Path("/tmp").glob(f"{work.name}*escaped*"))
    assert srv.proc.poll() is None, "the server exited:\n" + srv.log
    log = srv.log
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_port_zero_is_announced_and_metrics_count_the_refusals(served):
    url, _, _ = served
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
    metrics = httpx.get(url + "/metrics", timeout=10).text
    statuses = {m.group(1) for m in re.finditer(r'realm_requests_total\{endpoint="[^"]+",status="(\d+)"\}', metrics)}
    assert "200" in statuses
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=10)
    assert r.status_code == 401 and json.loads(r.text)["error"]["code"] == "invalid_api_key"
