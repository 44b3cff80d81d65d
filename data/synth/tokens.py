"""Seeded 32-hex tokens, as nuScenes uses; independent streams so that one part's draws never shift another's."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    """A generator for the named purpose (stable across runs: crc32, not Python's salted `hash`)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


class TokenFactory:
    """Draws nuScenes-style tokens (32 lowercase hex characters) from a seeded stream."""

    _BATCH = 1024

    def __init__(self, seed: int, name: str):
        self._rng = stream(seed, "tokens/" + name)
        self._buf: list[str] = []

    def __call__(self) -> str:
        if not self._buf:
            raw = self._rng.bytes(16 * self._BATCH).hex()
            self._buf = [raw[i : i + 32] for i in range(len(raw) - 32, -1, -32)]  # popped from the end
        return self._buf.pop()
