"""Latents derived from (seed, index), so image i is reproducible on its own.

A counter-based generator (SplitMix64 over the tuple (seed, index, dimension), then Box-Muller) makes
the latent of image i a pure function of (seed, i): the same whatever the batch size, the order, the
shard or the backend, and computed for a whole batch at once without a per-image Python loop.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
MAX_SEED = 2**63 - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # uint64 arithmetic wraps modulo 2**64 in numpy arrays, which is what SplitMix64 needs
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _uniform53(bits: np.ndarray) -> np.ndarray:
    """uint64 -> float64 in (0, 1]: never 0, so log() in Box-Muller is finite."""
    return ((bits >> _S11).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)


def latents_for(seed: int, indices: np.ndarray | range | list[int], latent_dim: int) -> np.ndarray:
    """Standard-normal latents [N, Z] float32 for image indices under `seed`."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63-1], got {seed}")
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)  # [N, 1]
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) ^ np.uint64(0x5851F42D4C957F2D))
        half = (latent_dim + 1) // 2
        j = np.arange(half, dtype=np.uint64).reshape(1, -1)  # [1, Z/2]
        base = _splitmix64(key ^ _splitmix64(idx)) + j * np.uint64(2)  # [N, Z/2]
        u1 = _uniform53(_splitmix64(base))
        u2 = _uniform53(_splitmix64(base + np.uint64(1)))
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    z = np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :latent_dim]  # [N, Z]
    return np.ascontiguousarray(z, dtype=np.float32)


def latents_range(seed: int, start: int, count: int, latent_dim: int) -> np.ndarray:
    return latents_for(seed, np.arange(start, start + count, dtype=np.uint64), latent_dim)
