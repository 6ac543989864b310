"""`python -m realm web`: a static server for the browser host on 127.0.0.1.

It serves only the browser host's files: `/` (redirects to /js/web/, the page), `/js/web/*`, `/js/src/**` (the host
core the worker imports) and `/realm/guest/*.wasm` (the guest and the meta module, the same files
the Python host runs). Anything else is 404. No network beyond the loopback address.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from realm.errors import RealmError

log = logging.getLogger("realm.web")

ROOT = Path(__file__).resolve().parent.parent
SERVED = ("js/web/", "js/src/", "realm/guest/")
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html",
         ".json": "application/json", ".css": "text/css"}


class _Handler(SimpleHTTPRequestHandler):
    """Static files from the whitelisted folders of `directory`; `/` is the page."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def do_GET(self) -> None:
        if urlsplit(self.path).path in ("", "/"):  # the page, at a URL its relative imports work from
            self.send_response(302)
            self.send_header("Location", "/js/web/")
            self.end_headers()
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        rel = posixpath.normpath(unquote(urlsplit(path).path)).lstrip("/")
        ok = any((rel + "/").startswith(p) for p in SERVED) and ".." not in rel.split("/")
        if ok and rel.startswith("realm/guest/") and not rel.endswith(".wasm"):
            ok = False
        if not ok:
            return str(Path(self.directory) / "__not_served__")
        return str(Path(self.directory) / rel)

    def list_directory(self, path):  # no directory listings
        self.send_error(404)
        return None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def web_root() -> Path:
    """The checkout holding js/web and realm/guest (raises RealmError when the browser host is not installed)."""
    if not (ROOT / "js" / "web" / "index.html").is_file():
        raise RealmError(f"the browser host's files are not in this installation ({ROOT / 'js' / 'web'} is missing); "
                         "run `python -m realm web` from a realm checkout")
    if not (ROOT / "realm" / "guest" / "realm_meta.wasm").is_file():
        raise RealmError(f"{ROOT / 'realm' / 'guest' / 'realm_meta.wasm'} is missing; build it with `bash guest_rs/build.sh`")
    return ROOT


def make_server(port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server for the browser host bound to `host:port` (port 0: an ephemeral port); call serve_forever()."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RealmError(f"the web host listens on the loopback address only, not {host!r}")
    server = ThreadingHTTPServer((host, port), partial(_Handler, directory=str(web_root())))
    server.daemon_threads = True
    return server


def serve_in_thread(port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread (for tests); returns it and its base URL."""
    server = make_server(port)
    threading.Thread(target=server.serve_forever, name="realm-web", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}/"
