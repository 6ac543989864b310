"""`realm serve` on the default model (Gemma 3 270M, wasm engine): the Paris check through the
real `openai` client, streamed and not. Few, short generations: each costs seconds on 2 cores."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from realm.server.settings import Settings  # noqa: E402
from serving import running_server  # noqa: E402

PARIS = "What is the capital of France?"


@pytest.fixture(scope="module")
def model_srv(default_model):
    with running_server(Settings(models=[f"gemma={default_model}"], parallel=2, max_queue=4, ctx=512)) as s:
        yield s


def test_default_model_answers_paris(model_srv):
    c = openai.OpenAI(base_url=model_srv.url + "/v1", api_key="none", max_retries=0, timeout=300)
    assert [m.id for m in c.models.list().data] == ["gemma"]
    r = c.completions.create(model="gemma", prompt=PARIS, max_tokens=10, temperature=0)
    assert "Paris" in r.choices[0].text, r.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in
                       c.completions.create(model="gemma", prompt=PARIS, max_tokens=10, temperature=0, stream=True))
    assert streamed == r.choices[0].text
