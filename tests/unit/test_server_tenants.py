"""API key files, tenants' limits and the server settings (realm.server.tenants / .settings)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from realm.errors import RealmError, ServeError  # noqa: E402
from realm.server.settings import Settings, is_loopback  # noqa: E402
from realm.server.tenants import KeyRing  # noqa: E402


def ring(tmp_path, text: str) -> KeyRing:
    p = tmp_path / "keys"
    p.write_text(text)
    return KeyRing.from_file(p)


def test_key_file_maps_keys_to_tenants_with_limits(tmp_path):
    r = ring(tmp_path, "# comment\n\nkey-aaaa-1 alice concurrency=2 max_tokens=64 quota=1000  # trailing\n"
                       "key-aaaa-2 alice\nkey-bbbb-1 bob\n")
    a = r.authenticate("Bearer key-aaaa-1")
    assert a is r.authenticate("bearer key-aaaa-2")  # two keys, one tenant
    assert (a.name, a.concurrency, a.max_tokens, a.quota) == ("alice", 2, 64, 1000)
    b = r.authenticate("Bearer key-bbbb-1")
    assert b.name == "bob" and b.quota is None
    for header in (None, "", "Bearer", "Basic key-aaaa-1", "Bearer key-aaaa-", "Bearer key-aaaa-1x", "key-aaaa-1"):
        with pytest.raises(ServeError) as e:
            r.authenticate(header)
        assert e.value.status == 401


@pytest.mark.parametrize("text, what", [
    ("", "no keys"),
    ("short alice\n", "at least"),
    ("key-aaaa-1\n", "expected"),
    ("key-aaaa-1 al/ice\n", "tenant name"),
    ("key-aaaa-1 alice quota=0\n", "bad limit"),
    ("key-aaaa-1 alice speed=3\n", "bad limit"),
    ("key-aaaa-1 alice\nkey-aaaa-1 bob\n", "twice"),
    ("key-aaaa-1 alice quota=5\nkey-aaaa-2 alice quota=6\n", "already has limits"),
])
def test_bad_key_files_are_refused_with_the_line(tmp_path, text, what):
    with pytest.raises(RealmError, match=what):
        ring(tmp_path, text)


def test_tenant_concurrency_and_quota():
    r = KeyRing.open_local()
    t = r.authenticate(None)
    assert t.name == "local"
    t.concurrency, t.quota = 1, 10
    t.admit()
    with pytest.raises(ServeError) as e:
        t.admit()
    assert e.value.status == 429 and e.value.code == "rate_limit_exceeded"
    t.finish(10)
    assert t.active == 0 and t.tokens_left() == 0
    with pytest.raises(ServeError) as e:
        t.admit()
    assert e.value.code == "insufficient_quota"


def test_settings_validate_and_read_the_environment():
    s = Settings.from_env({"REALM_SERVE_PARALLEL": "3", "REALM_SERVE_MODELS": "a.gguf,b=c.gguf",
                           "REALM_SERVE_TIMEOUT": "2.5"}, max_queue=1)
    assert (s.parallel, s.models, s.timeout, s.max_queue) == (3, ["a.gguf", "b=c.gguf"], 2.5, 1)
    with pytest.raises(RealmError, match="parallel"):
        Settings(parallel=0)
    with pytest.raises(RealmError, match="REALM_SERVE_PORT"):
        Settings.from_env({"REALM_SERVE_PORT": "eighty"})
    assert Settings().loopback_only
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")


def test_cli_refuses_a_public_host_without_keys():
    from click.testing import CliRunner

    from realm.cli import main

    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 1 and "api-key-file" in r.output
