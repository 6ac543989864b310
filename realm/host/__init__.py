"""The host side of the sandbox: the model store, the ABI's host functions, the wasmtime adapter.

`store` and `abi` are plain Python; `runtime` is the only module that imports wasmtime (import it
explicitly: `from realm.host.runtime import Guest`).
"""

from realm.host.abi import ERRORS, Err, code_name
from realm.host.store import (
    BadModelError, IdConflictError, ModelStore, NoModelError, QuotaError, StoredModel, default_store,
)

__all__ = ["ModelStore", "StoredModel", "default_store", "NoModelError", "IdConflictError", "QuotaError",
           "BadModelError", "Err", "ERRORS", "code_name"]
