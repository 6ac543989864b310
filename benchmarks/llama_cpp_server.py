"""Run llama-cpp-python's OpenAI-compatible server with llama.cpp's extra buffer types off.

    python benchmarks/llama_cpp_server.py --model MODEL.gguf --host 127.0.0.1 --port 8090 \
        --n_ctx 512 --n_threads 2 --interrupt_requests False

The same arguments as `python -m llama_cpp.server`. llama.cpp's extra buffer types (weight
repacking, the AMX path) crash on this machine's Xeons, and llama-cpp-python 0.3.36 has no server
setting (nor `Llama` argument) for `use_extra_bufts`: the field is set on the model parameters it
builds from `llama_model_default_params()`, so that function is wrapped before the server starts.
Needs `pip install sse-starlette starlette-context pydantic-settings` beside llama-cpp-python.
"""

from __future__ import annotations

import sys


def main() -> int:
    from llama_cpp.server.__main__ import main as server_main

    from realm.bench_llamacpp import no_extra_buffer_types

    with no_extra_buffer_types():
        server_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
