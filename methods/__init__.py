"""KV-cache methods of METHODS.md behind one interface (`methods.base.KVMethod`).

Importing this package registers every method; look them up with `get_method_class(name)`.
"""
from methods import reference  # noqa: F401  (registers bf16)
from methods.base import (
    CODE_STORAGES,
    EncodedKV,
    KVCall,
    KVMethod,
    Marks,
    MethodError,
    Param,
    get_method_class,
    method_names,
    register_method,
)

__all__ = [
    "CODE_STORAGES",
    "EncodedKV",
    "KVCall",
    "KVMethod",
    "Marks",
    "MethodError",
    "Param",
    "get_method_class",
    "method_names",
    "register_method",
]
