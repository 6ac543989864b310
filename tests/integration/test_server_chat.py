"""`realm serve`'s /v1/chat/completions and its chat page: the openai client, hostile chat templates
in GGUFs (400, nothing runs, the server keeps serving) and the page driven in headless Chromium.

Several small synthetic models in one server, routed by the `model` field: `chat` (a plain-text
template), `evil` (a template that tries to leave the sandbox), `loop` (one that tries to run
forever), `plain` (none: a base model).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from realm.quants import GGMLType  # noqa: E402
from realm.server.settings import Settings  # noqa: E402
from serving import running_server  # noqa: E402
from synth import make_model  # noqa: E402

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
MARKER = "/tmp/realm-serve-template-escaped"
EVIL = ("{{ cycler.__init__.__globals__.os.system('touch " + MARKER + "') }}"
        "{{ ''.__class__.__mro__[1].__subclasses__() }}")
LOOP = "{% for i in range(10**9) %}{% for j in range(10**9) %}x{% endfor %}{% endfor %}"
HI = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def chat_srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    kw = dict(arch="llama", qtype=GGMLType.Q8_0, dim=256, hidden_dim=512, head_dim=64, context_length=1024)
    models = [f"chat={make_model(d / 'chat.gguf', chat_template=TEMPLATE, **kw)}",
              f"evil={make_model(d / 'evil.gguf', chat_template=EVIL, seed=1, **kw)}",
              f"loop={make_model(d / 'loop.gguf', chat_template=LOOP, seed=2, **kw)}",
              f"plain={make_model(d / 'plain.gguf', seed=3, **kw)}"]
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    with running_server(Settings(models=models, parallel=2, max_queue=4)) as s:
        yield s


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_chat_completion_streamed_and_not(chat_srv):
    c = client(chat_srv)
    assert sorted(m.id for m in c.models.list().data) == ["chat", "evil", "loop", "plain"]
    r = c.chat.completions.create(model="chat", messages=HI, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    text = r.choices[0].message.content
    assert text
    # the prompt is the template's rendering, tokenized: /tokenize of the same text agrees
    rendered = "user: hello world\nassistant:"
    ids = httpx.post(chat_srv.url + "/tokenize", json={"content": rendered, "model": "chat"}).json()["tokens"]
    assert r.usage.prompt_tokens == len(ids)

    chunks = list(c.chat.completions.create(model="chat", messages=HI, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].object == "chat.completion.chunk"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_chat_finish_reason_stop_on_a_stop_string(chat_srv):
    c = client(chat_srv)
    full = c.chat.completions.create(model="chat", messages=HI, max_tokens=16, temperature=0).choices[0].message.content
    k = len(full) // 2
    stop = full[k:k + 3]
    assert stop.strip(), full
    want = full[:full.find(stop)]
    r = c.chat.completions.create(model="chat", messages=HI, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == want
    assert r.usage.completion_tokens < 16
    chunks = list(c.chat.completions.create(model="chat", messages=HI, max_tokens=16, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop" and all(ch.usage is None for ch in chunks)


def test_hostile_and_missing_templates_get_400_and_the_server_keeps_serving(chat_srv):
    c = client(chat_srv)
    for model in ("evil", "loop", "plain"):
        t0 = time.monotonic()
        r = httpx.post(chat_srv.url + "/v1/chat/completions", json={"model": model, "messages": HI}, timeout=60)
        assert r.status_code == 400, (model, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "Traceback" not in r.text
        assert time.monotonic() - t0 < 15  # the render is bounded (2 s)
        # the same model still completes plain prompts
        assert c.completions.create(model=model, prompt="hello", max_tokens=3, temperature=0).usage.completion_tokens == 3
    assert not os.path.exists(MARKER)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="evil", messages=HI, stream=True)
    # bad messages
    r = httpx.post(chat_srv.url + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user"}]})
    assert r.status_code in (200, 400, 422)
    r = httpx.post(chat_srv.url + "/v1/chat/completions", json={"model": "chat", "messages": "hi"})
    assert r.status_code == 422
    assert c.chat.completions.create(model="chat", messages=HI, max_tokens=2, temperature=0).usage.completion_tokens == 2


def _chromium():
    selenium = pytest.importorskip("selenium")  # noqa: F841
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.exists(driver_path) and os.path.exists(browser)):
        pytest.fail("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
        options.add_argument(arg)
    options.binary_location = browser
    # an explicit driver: Selenium Manager never downloads anything
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_chat_page_streams_a_reply_in_headless_chromium(chat_srv, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    expected = client(chat_srv).chat.completions.create(model="chat", messages=HI, max_tokens=8,
                                                        temperature=0).choices[0].message.content
    driver = _chromium()
    try:
        driver.set_page_load_timeout(30)
        driver.get(chat_srv.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "ready")
        select = Select(driver.find_element(By.ID, "model"))
        assert sorted(o.text for o in select.options) == ["chat", "evil", "loop", "plain"]
        select.select_by_value("chat")
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("8")
        driver.find_element(By.ID, "prompt").send_keys("hello world")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1'], .msg.error[data-done='1']"))
        reply = driver.find_element(By.CSS_SELECTOR, ".msg[data-done='1']")
        assert "error" not in reply.get_attribute("class"), reply.text
        assert reply.get_attribute("textContent") == expected
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "hello world"
        assert driver.find_element(By.ID, "status").text.startswith("done: 8 tokens")
        # an error is shown on the page, not thrown away: the hostile template's 400
        select.select_by_value("evil")
        driver.find_element(By.ID, "prompt").send_keys("hi again")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))
        assert "chat template" in driver.find_element(By.CSS_SELECTOR, ".msg.error").text
        shot = artifacts_dir / "chat_page.png"
        driver.save_screenshot(str(shot))
        print(f"chat page screenshot: {shot}")
        assert shot.stat().st_size > 1000
    finally:
        driver.quit()
