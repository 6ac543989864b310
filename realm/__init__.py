"""realm: run GGUF-quantized LLaMA-family models in a WebAssembly sandbox (and natively with Numba).

    import realm
    model = realm.load()                      # the default model, Gemma 3 270M Q4_K_M
    for piece in model.generate("What is the capital of France?", engine="wasm"):
        print(piece, end="")
"""

__version__ = "0.1.0"

__all__ = ["load", "Model", "Generation", "SamplingParams", "__version__"]


def __getattr__(name):  # re-exports, imported lazily so `import realm` stays cheap
    if name in ("load", "Model"):
        from realm import api

        return getattr(api, name)
    if name == "Generation":
        from realm.generate import Generation

        return Generation
    if name == "SamplingParams":
        from realm.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'realm' has no attribute {name!r}")
