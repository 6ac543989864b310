"""`realm serve`: an OpenAI-compatible HTTP server, one sandboxed guest per running request.

    from realm.server import Settings, create_app
    app = create_app(Settings(models=["model.gguf"], parallel=2))   # an ASGI app (FastAPI)

Needs the `serve` extra (FastAPI, uvicorn, prometheus_client).
"""

from realm.server.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name):
    if name == "create_app":
        from realm.server.app import create_app

        return create_app
    raise AttributeError(f"module 'realm.server' has no attribute {name!r}")
