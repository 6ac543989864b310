"""The JavaScript host's own suite, `node --test` in js/, as part of the README's test command.

The fixtures (tests/js_fixtures.py: the Python oracle's answers) are written once into a temp folder and
llama.cpp's vocab folder is passed on when present, so the node tests check the meta module's tokenizer
against the same vectors as tests/unit/test_meta_tokenizer.py. Without Node.js >= 20 the test is skipped,
unless REALM_REQUIRE_NODE=1 (`.ci/run`), which makes it a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"
NODE_MIN = 20


def node_or_skip() -> str:
    """The `node` binary (>= NODE_MIN); skips, or fails under REALM_REQUIRE_NODE=1, saying what is missing."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "Node.js is not installed (`apt-get install nodejs`; .ci/run does it)"
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        m = re.match(r"v(\d+)\.", version)
        if not m or int(m.group(1)) < NODE_MIN:
            problem = f"the JavaScript host needs Node.js >= {NODE_MIN}, found {version or 'no version'} at {node}"
    if problem:
        if os.environ.get("REALM_REQUIRE_NODE") == "1":
            pytest.fail(f"REALM_REQUIRE_NODE=1 but {problem}")
        pytest.skip(problem)
    return node


@pytest.fixture(scope="session")
def node() -> str:
    return node_or_skip()


@pytest.fixture(scope="session")
def js_fixtures(tmp_path_factory) -> Path:
    from js_fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("js-fixtures"))


def failures(tap: str) -> list[str]:
    """'name: message' of every `not ok` test in node's TAP output (subtests indented, YAML block after)."""
    out, lines = [], tap.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)not ok \d+ - (.*)$", line)
        if not m:
            continue
        indent, detail, in_error = m.group(1), [], False
        for follow in lines[i + 1:]:
            if re.match(rf"^{indent}(not )?ok \d+", follow) or re.match(rf"^{indent}# Subtest", follow):
                break
            text = follow.strip()
            key = re.match(r"^([a-zA-Z]+):", text)
            if key:
                in_error = key.group(1) == "error"
            if text and (in_error or (key and key.group(1) in ("expected", "actual", "location"))):
                detail.append(text)
        out.append(f"{m.group(2)}\n    " + "\n    ".join(detail[:12]))
    return out


def test_node_suite(node, js_fixtures):
    from conftest import vocab_dir

    env = {**os.environ, "REALM_JS_FIXTURES": str(js_fixtures)}
    vocab = vocab_dir()
    if vocab is not None:
        env["REALM_VOCAB_DIR"] = str(vocab)
    elif os.environ.get("REALM_REQUIRE_VOCAB") == "1":
        pytest.fail("REALM_REQUIRE_VOCAB=1 but llama.cpp's vocab files are missing: run `python tests/fetch_data.py`")
    r = subprocess.run([node, "--test", "--test-reporter=tap"], cwd=JS, env=env, capture_output=True, text=True,
                       timeout=300)
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", r.stdout, re.MULTILINE))
    bad = failures(r.stdout)
    if r.returncode != 0 or bad:
        stderr = f"\nstderr:\n{r.stderr[-3000:]}" if r.stderr.strip() else ""
        tail = "" if bad else f"\nstdout tail:\n{r.stdout[-3000:]}"
        pytest.fail(f"node --test in js/ exited {r.returncode} ({counts}); {len(bad)} failing:\n" + "\n".join(bad)
                    + stderr + tail, pytrace=False)
    assert int(counts.get("tests", 0)) > 50, counts
    skipped = int(counts.get("skipped", 0))
    if vocab is not None:
        assert skipped == 0, f"{skipped} node test(s) skipped although fixtures and vocab files were given: {counts}"
