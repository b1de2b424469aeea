"""fastgan.ops._cache: the ops' bounded caches of validated calls and plans."""

from fastgan.ops import batch_norm, bce
from fastgan.ops._cache import BoundedCache


def test_bounded_cache_forgets_everything_when_full():
    cache = BoundedCache(3)
    assert [cache.store(key, key * 10) for key in range(3)] == [0, 10, 20]
    assert dict(cache) == {0: 0, 1: 10, 2: 20}
    assert cache.store(3, 30) == 30  # full: emptied first, so it never exceeds its limit
    assert dict(cache) == {3: 30}
    cache.store(3, 31)  # an existing key when not full: replaced
    assert cache.get(3) == 31 and len(cache) == 1


def test_op_caches_are_bounded():
    for cache in (bce._BCE_CALLS, bce._CHECKED_ARGUMENTS, bce._LABELS_CALLS, batch_norm._CHECKED_ARGUMENTS):
        assert isinstance(cache, BoundedCache) and 0 < cache.limit <= 4096
