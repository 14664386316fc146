"""Steps that must never be served from ZenML's cache (they read the world as it is now, or write to
a registry): a run config's `enable_cache: true` overrides a step's own `enable_cache=False`, so
"never cached" has to live in the cache key."""
from __future__ import annotations

import uuid

from zenml.config import CachePolicy


def fresh_key() -> str:
    """A cache key no earlier run has."""
    return uuid.uuid4().hex


# By source path, not the function: resolving a function needs ZenML's source root, which an
# importer without one (a pytest-xdist worker, python -c) lacks; the path is loaded at run time.
NEVER_CACHED = dict(enable_cache=False, cache_policy=CachePolicy(cache_func=f"{__name__}.fresh_key"))
