"""b-bit per-row min–max quantisation of what crosses a cut (GuardedTuning, SPEC §2).

Each row r of x (the last axis, d values) is sent as b-bit codes c = round((x − o_r) / s_r) with offset
o_r = min(x_r) and scale s_r = (max(x_r) − min(x_r)) / (2^b − 1), plus (s_r, o_r) in fp32. Codes are packed
b bits each, so a [B, L, d] tensor costs ⌈B·L·d·b / 8⌉ + 8·B·L bytes; the round-trip error is at most s_r / 2
per value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(
            f"quantisation bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r} "
            f"(8 halves fp16 and quarters fp32; 32-bit floats need no quantisation: leave it unset)"
        )


@dataclass
class Quantised:
    """A packed b-bit tensor: ``payload`` (bytes of the codes), per-row ``scale`` and ``offset``, its ``shape``."""

    payload: bytes
    scale: torch.Tensor  # fp32 [rows]
    offset: torch.Tensor  # fp32 [rows]
    shape: tuple[int, ...]
    bits: int

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the packed codes plus fp32 scale and offset per row."""
        return len(self.payload) + 4 * (self.scale.numel() + self.offset.numel())


def quantised_bytes(shape: tuple[int, ...], bits: int) -> int:
    """⌈numel·b/8⌉ + 8 bytes per row: the size :func:`quantise` produces for ``shape``."""
    check_bits(bits)
    rows = math.prod(shape[:-1])
    return math.ceil(math.prod(shape) * bits / 8) + 8 * rows


def quantise(x: torch.Tensor, bits: int) -> Quantised:
    check_bits(bits)
    rows = x.detach().reshape(-1, x.shape[-1]).float().cpu()
    offset = rows.min(dim=1).values
    scale = (rows.max(dim=1).values - offset) / (2**bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant row: every code 0
    codes = torch.round((rows - offset[:, None]) / safe[:, None]).clamp_(0, 2**bits - 1).to(torch.int64).numpy()
    return Quantised(_pack(codes.reshape(-1), bits), scale, offset, tuple(x.shape), bits)


def dequantise(q: Quantised) -> torch.Tensor:
    n = math.prod(q.shape)
    codes = torch.from_numpy(_unpack(q.payload, q.bits, n).astype(np.float32)).reshape(-1, q.shape[-1])
    return (codes * q.scale[:, None] + q.offset[:, None]).reshape(q.shape)


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """Codes < 2^bits, ``bits`` each, most significant bit first, zero-padded to whole bytes."""
    if bits in (8, 16):
        return codes.astype(np.uint8 if bits == 8 else ">u2").tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((codes[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def _unpack(payload: bytes, bits: int, n: int) -> np.ndarray:
    if bits in (8, 16):
        return np.frombuffer(payload, dtype=np.uint8 if bits == 8 else ">u2").astype(np.int64)[:n]
    bit_rows = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: n * bits].reshape(n, bits).astype(np.int64)
    return bit_rows @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
