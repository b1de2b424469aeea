"""Environment variables read on every op call, at a fraction of ``os.environ.get``'s cost.

Backend selection reads ``FASTGAN_BACKEND`` (and on CUDA tensors ``FASTGAN_CUDA_EMULATE``
and ``TRITON_INTERPRET``) per call, so that a change takes effect at once. ``os.environ.get``
encodes the key and decodes the value each time (about 0.5 µs, host time a 256-logit loss
cannot spare). ``os.environ`` keeps the encoded mapping it reads in ``_data``, updated by
every assignment and deletion through ``os.environ``; looking the pre-encoded key up there
gives the same answer for the cost of a dict lookup. Where an interpreter lacks that
mapping, ``os.environ.get`` is used.
"""

from __future__ import annotations

import os

_ENCODED = getattr(os.environ, "_data", None)
_encode_key = getattr(os.environ, "encodekey", None)
_decode_value = getattr(os.environ, "decodevalue", None)
_FAST = isinstance(_ENCODED, dict) and callable(_encode_key) and callable(_decode_value)
_encoded_keys: dict[str, object] = {}


def get(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)``."""
    if not _FAST:
        return os.environ.get(name, default)
    key = _encoded_keys.get(name)
    if key is None:
        key = _encoded_keys[name] = _encode_key(name)
    raw = _ENCODED.get(key)
    return default if raw is None else _decode_value(raw)
