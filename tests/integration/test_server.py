"""`realm serve` end to end: the real `openai` client and raw HTTP against servers started on
127.0.0.1 (ephemeral ports), on a small synthetic model (mechanics) and the default model (Paris).

Greedy (temperature 0) output is deterministic for a given model and prompt, so a text streamed,
generated alone or among 8 concurrent requests must be identical.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from realm.host.runtime import default_guest_path  # noqa: E402
from realm.quants import GGMLType  # noqa: E402
from realm.server.settings import Settings  # noqa: E402
from serving import running_server  # noqa: E402
from synth import make_model  # noqa: E402

if not default_guest_path().exists():
    pytest.skip("the guest realm/guest/realm_guest.wasm is not built yet", allow_module_level=True)

CTX = 4096
PROMPTS = ["the capital of France", "hello world", "what is the", "Paris is", "and to in", "of the world",
           "it was the", "France"]


@pytest.fixture(scope="module")
def synth_path(tmp_path_factory):
    # dim 256: ~1 ms a token in the guest; greedy runs of thousands of tokens without EOS
    return make_model(tmp_path_factory.mktemp("serve") / "tiny.gguf", arch="llama", qtype=GGMLType.Q8_0,
                      dim=256, hidden_dim=512, head_dim=64, context_length=CTX)


@pytest.fixture(scope="module")
def srv(synth_path):
    with running_server(Settings(models=[str(synth_path)], parallel=4, max_queue=8, ctx=CTX)) as s:
        yield s


def client(s, key="none", **kw) -> "openai.OpenAI":
    return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def complete(s, prompt: str, max_tokens: int = 24) -> str:
    r = client(s).completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
    return r.choices[0].text


def test_models_completion_stream_and_usage(srv):
    c = client(srv)
    models = c.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].object == "model"

    r = c.completions.create(model="tiny", prompt="the capital of France", max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 20 and r.usage.prompt_tokens > 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    assert r.choices[0].text

    chunks = list(c.completions.create(model="tiny", prompt="the capital of France", max_tokens=20, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == r.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20  # the usage chunk comes last
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1

    # the same request twice gives the same text: the pooled guest was reset in between
    assert complete(srv, "the capital of France", 20) == r.choices[0].text
    e = c.completions.create(model="tiny", prompt="the capital of France", max_tokens=20, temperature=0, echo=True)
    assert e.choices[0].text == "the capital of France" + r.choices[0].text


def test_finish_reason_stop_on_a_stop_string_streamed_and_not(srv):
    c = client(srv)
    full = complete(srv, "the capital of France", 24)
    k = len(full) // 2
    stop = full[k:k + 3]
    assert stop.strip(), full
    want = full[:full.find(stop)]
    r = c.completions.create(model="tiny", prompt="the capital of France", max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == want
    assert r.usage.completion_tokens < 24
    chunks = list(c.completions.create(model="tiny", prompt="the capital of France", max_tokens=24, temperature=0,
                                       stop=stop, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # without stream_options.include_usage no chunk carries usage, and none is empty of choices
    plain = list(c.completions.create(model="tiny", prompt="the capital of France", max_tokens=5, temperature=0,
                                      stream=True))
    assert all(ch.usage is None and ch.choices for ch in plain)
    assert plain[-1].choices[0].finish_reason == "length"


def test_null_means_the_default_and_types_are_strict(srv):
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}
    want = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    nulls = {"top_p": None, "top_k": None, "min_p": None, "seed": None, "stop": None, "n": None, "stream": None,
             "stream_options": None, "user": None, "echo": None, "repeat_penalty": None}
    r = httpx.post(srv.url + "/v1/completions", json={**body, **nulls}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == want
    for field, value in [("model", None), ("prompt", None), ("temperature", "0"), ("temperature", False),
                         ("top_p", "1"), ("seed", 1.5), ("echo", 1)]:
        r = httpx.post(srv.url + "/v1/completions", json={**body, field: value}, timeout=60)
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["error"]["param"].split(".")[0] == field


def test_sse_wire_format(srv):
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": "hello", "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: ")
        body = json.loads(e[len("data: "):])
        assert body["object"] == "text_completion"


def test_eight_concurrent_clients_get_their_solo_text(srv):
    alone = [complete(srv, p) for p in PROMPTS]
    assert len(set(alone)) > 1  # the prompts lead to different texts
    together: list = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def work(i):
        start.wait()
        if i % 2:  # half of them stream
            chunks = client(srv).completions.create(model="tiny", prompt=PROMPTS[i], max_tokens=24, temperature=0,
                                                    stream=True)
            together[i] = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        else:
            together[i] = complete(srv, PROMPTS[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    # every guest went back to the pool, at most `parallel` of them
    srv.wait_idle()
    served = srv.scheduler.models["tiny"]
    assert 1 <= len(served._idle) <= 4


def test_flood_gets_503_with_retry_after_and_accepted_requests_complete(synth_path):
    with running_server(Settings(models=[str(synth_path)], parallel=1, max_queue=1, ctx=CTX)) as s:
        body = {"model": "tiny", "prompt": "the capital", "max_tokens": 800, "temperature": 0, "stream": True}
        results: dict = {}

        def long_stream(i):
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
                results[i] = (r.status_code, r.read().decode())

        first = [threading.Thread(target=long_stream, args=(i,)) for i in range(2)]
        for t in first:
            t.start()
        deadline = time.monotonic() + 30
        while s.scheduler.stats()["in_flight"] < 2:  # one running, one queued: the server is full
            assert time.monotonic() < deadline
            time.sleep(0.005)
        refused = [httpx.post(s.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=30)
                   for _ in range(4)]
        for t in first:
            t.join(120)
        for r in refused:
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
        for status, text in results.values():
            assert status == 200
            chunks = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert text.endswith("data: [DONE]\n\n")

        # a burst: every request either completes or gets a 503, none is lost
        n = 10
        outcomes: list = [None] * n
        start = threading.Barrier(n)

        def burst(i):
            start.wait()
            r = httpx.post(s.url + "/v1/completions", timeout=120,
                           json={"model": "tiny", "prompt": PROMPTS[i % 8], "max_tokens": 200, "temperature": 0})
            outcomes[i] = (r.status_code, r.json(), r.headers.get("retry-after"))

        threads = [threading.Thread(target=burst, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        codes = [o[0] for o in outcomes]
        assert set(codes) <= {200, 503} and codes.count(200) >= 2, codes
        for status, js, retry in outcomes:
            if status == 200:
                assert js["usage"]["completion_tokens"] == 200 and js["choices"][0]["finish_reason"] == "length"
            else:
                assert retry is not None
        assert s.wait_idle()["in_flight"] == 0


def test_disconnect_cancels_the_generation(srv):
    before = srv.scheduler.metrics.generations.labels("tiny", "cancelled")._value.get()
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": "the", "max_tokens": 4000, "temperature": 0, "stream": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert got[0].startswith("data: {")
    t0 = time.monotonic()
    srv.wait_idle(timeout=10)
    assert time.monotonic() - t0 < 5  # 4000 tokens would take several seconds
    assert srv.scheduler.metrics.generations.labels("tiny", "cancelled")._value.get() == before + 1

    # a non-streaming client that gives up is noticed too (polled every 0.5 s)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "the", "max_tokens": 4000, "temperature": 0},
                   timeout=0.3)
    t0 = time.monotonic()
    srv.wait_idle(timeout=10)
    assert time.monotonic() - t0 < 5
    assert srv.scheduler.metrics.generations.labels("tiny", "cancelled")._value.get() == before + 2


def test_deadline_ends_with_an_error_and_the_server_keeps_serving(synth_path):
    with running_server(Settings(models=[str(synth_path)], parallel=1, max_queue=2, ctx=CTX, timeout=0.3)) as s:
        c = client(s)
        with pytest.raises(openai.APIError) as err:
            for _ in c.completions.create(model="tiny", prompt="the", max_tokens=4000, temperature=0, stream=True):
                pass
        assert "deadline" in str(err.value)
        r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "the", "max_tokens": 4000, "temperature": 0}, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        served = s.scheduler.models["tiny"]
        assert served._idle == [] and not served._live  # the guests were recycled, not pooled
        # greedy: a sampled token could be EOS and end the completion early
        assert c.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0).usage.completion_tokens == 3


def test_bad_input_gets_4xx_and_no_traceback(srv):
    url = srv.url
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400),
        (dict(content=b"[1, 2]", headers={"content-type": "application/json"}), 400),
        (dict(json={"model": "tiny", "prompt": 5}), 422),
        (dict(json={"model": "tiny", "prompt": "x", "max_tokens": "many"}), 422),
        (dict(json={"model": "tiny", "prompt": "x", "temperature": -1}), 422),
        (dict(json={"model": "tiny", "prompt": "x", "n": 2}), 422),
        (dict(json={"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), 422),
        (dict(json={"model": "tiny"}), 422),
        (dict(json={"model": "tiny", "prompt": "x" * (10 << 20)}), 413),
        (dict(json={"model": "tiny", "prompt": "x", "max_tokens": 10 ** 9}), 422),
        (dict(json={"model": "tiny", "prompt": "x", "max_tokens": CTX}), 400),
        (dict(json={"model": "tiny", "prompt": "hello " * 120_000}), 400),  # < 1 MiB, far past the context
        (dict(json={"model": "gpt-4", "prompt": "x"}), 404),
    ]
    for kwargs, status in cases:
        r = httpx.post(url + "/v1/completions", timeout=60, **kwargs)
        assert r.status_code == status, (kwargs.get("json", kwargs.get("content"))[:80] if isinstance(kwargs.get("content"), bytes) else str(kwargs)[:200], r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"]
        assert "Traceback" not in r.text and "File \"" not in r.text
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": []}, timeout=30)
    assert r.status_code == 422
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
                   timeout=30)
    assert r.status_code == 422
    r = httpx.get(url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(url + "/detokenize", json={"tokens": [1, 10 ** 9]})
    assert r.status_code == 400
    r = httpx.post(url + "/tokenize", json={"content": "hello", "model": "nope"})
    assert r.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client(srv).completions.create(model="nope", prompt="x")
    # still serving
    assert complete(srv, "hello", 4)


def test_tokenize_detokenize_health_metrics(srv):
    tokens = httpx.post(srv.url + "/tokenize", json={"content": "hello world"}).json()["tokens"]
    assert tokens[0] == 1 and len(tokens) > 2  # BOS, then the text
    text = httpx.post(srv.url + "/detokenize", json={"tokens": tokens[1:]}).json()["content"]
    assert text.strip() == "hello world"
    assert httpx.get(srv.url + "/health").json() == {"status": "ok", "models": {"tiny": "ready"}}
    complete(srv, "hello", 3)
    m = httpx.get(srv.url + "/metrics").text
    for name in ("realm_requests_total", "realm_queue_depth", "realm_time_to_first_token_seconds_bucket",
                 "realm_inter_token_seconds_bucket", "realm_completion_tokens_total", "realm_guest_memory_bytes"):
        assert name in m
    memory = [ln for ln in m.splitlines() if ln.startswith('realm_guest_memory_bytes{model="tiny"}')]
    assert memory and float(memory[0].split()[-1]) > 0


def test_health_is_503_while_loading(synth_path):
    from realm.server.scheduler import Scheduler

    release = threading.Event()

    class SlowScheduler(Scheduler):
        def _load(self):
            release.wait(30)
            super()._load()

    settings = Settings(models=[str(synth_path)], ctx=CTX)
    from realm.server.app import create_app

    app = create_app(settings, scheduler=SlowScheduler(settings))
    from fastapi.testclient import TestClient

    with TestClient(app, client=("127.0.0.1", 50000)) as tc:
        r = tc.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = tc.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 503 and "retry-after" in r.headers
        release.set()
        assert app.state.scheduler.wait_ready(60) == "ok"
        assert tc.get("/health").status_code == 200


def test_api_keys_and_tenant_limits(synth_path, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# key tenant limits\n"
                    "alice-key-0001 alice max_tokens=16\n"
                    "bob-key-000001 bob quota=60\n"
                    "bob-key-000002 bob\n")
    with running_server(Settings(models=[str(synth_path)], ctx=CTX, api_key_file=str(keys))) as s:
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 8, "temperature": 0}  # greedy: no early EOS
        assert httpx.post(s.url + "/v1/completions", json=body).status_code == 401
        r = httpx.post(s.url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong-key-000"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(s, key="alice-key-0002").models.list()
        assert httpx.get(s.url + "/health").status_code == 200  # public
        alice = client(s, key="alice-key-0001")
        assert alice.completions.create(**body).usage.completion_tokens == 8
        with pytest.raises(openai.BadRequestError):
            alice.completions.create(**{**body, "max_tokens": 17})
        bob = client(s, key="bob-key-000002")  # bob's second key: the same tenant, the same quota
        used = 0
        with pytest.raises(openai.RateLimitError):
            for _ in range(10):
                r = bob.completions.create(**{**body, "max_tokens": 10})
                used += r.usage.total_tokens
        assert 0 < used <= 60
        assert alice.completions.create(**body).usage.completion_tokens == 8  # alice is not affected
