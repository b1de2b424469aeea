"""The bounded caches the ops keep of validated calls and launch plans, per argument layout."""

from __future__ import annotations


class BoundedCache(dict):
    """A dict that forgets everything once it holds ``limit`` entries.

    The ops' caches are keyed by argument shapes, strides, dtypes and scalars: a training run
    meets a handful of keys, but a caller sweeping shapes must not grow one without bound.
    Forgetting all at once costs one re-validation per live key, and no bookkeeping per hit
    (a hit is a plain ``dict.get``: host time is the cost of a small call).
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def store(self, key, value):
        """``self[key] = value``, first emptying a full cache; returns ``value``."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
