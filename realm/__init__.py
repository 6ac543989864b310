"""realm: run GGUF-quantized LLaMA-family models in a WebAssembly sandbox (and natively with Numba)."""

__version__ = "0.1.0"
