"""Run `realm serve`'s app under uvicorn in a thread on 127.0.0.1, on an ephemeral port, for a test.

    with running_server(Settings(models=[str(path)])) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from realm.server.app import create_app  # noqa: E402
from realm.server.settings import Settings  # noqa: E402

START_TIMEOUT = 120.0  # seconds for the models to load (the default model's first guest included)


class RunningServer:
    def __init__(self, app, server: uvicorn.Server, thread: threading.Thread):
        self.app, self.server, self.thread = app, server, thread
        sock = server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    @property
    def scheduler(self):
        return self.app.state.scheduler

    def wait_idle(self, timeout: float = 30.0) -> dict:
        """Wait until no request is queued or running; the scheduler's stats then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.scheduler.stats()
            if stats["in_flight"] == 0:
                return stats
            time.sleep(0.02)
        raise AssertionError(f"the server is still busy after {timeout} s: {self.scheduler.stats()}")


@contextlib.contextmanager
def running_server(settings: Settings, wait_ready: bool = True):
    """Start the app (port 0: the OS picks one), wait for its models, always stop it at the end."""
    settings.host, settings.port = "127.0.0.1", 0
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        running = RunningServer(app, server, thread)
        if wait_ready:
            status = app.state.scheduler.wait_ready(START_TIMEOUT)
            assert status == "ok", f"models did not load: {status} {app.state.scheduler.load_error}"
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "uvicorn did not stop"
