"""KV-cache methods of METHODS.md behind one interface (`methods.base.KVMethod`).

Importing this package registers every method; look them up with `get_method_class(name)`.
"""
# Registration order is METHODS.md's table order (#1-#33).
from methods import reference  # noqa: F401  (registers bf16)
from methods import rtn  # noqa: F401
from methods import kivi  # noqa: F401
from methods import quarot  # noqa: F401
from methods import prq  # noqa: F401
from methods import qaq  # noqa: F401
from methods import tiers  # noqa: F401
from methods import tptq  # noqa: F401
from methods import spatial  # noqa: F401
from methods import flowcache  # noqa: F401
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
