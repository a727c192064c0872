"""The two low-precision formats of the screen (:mod:`.screen`): bf16, and int8 by groups of
dimensions. Each rounds A and B once (the rounded rows ``x'`` and ``|x|``, ``|x'|``,
``|x - x'|`` per row, for the error bound) and computes blocks of products of the rounded rows,
stored as bf16 bits (uint16: numba has no bf16) for the screen's kernels.

- :class:`Bf16`: torch's bf16 GEMM (float32 accumulation). Fast where the CPU multiplies bf16
  (AMX tiles, AVX512-BF16), emulated and slow elsewhere.
- :class:`Int8`: each row scaled to int8 per group of dimensions, ``x'_g = s_g q_g`` with
  ``s_g = max |x_g| / 127``; the groups are dimensions of like scale (:func:`dim_groups`: the
  folded encoder, decoder and bias terms of an SAE differ by 10-100x, and one scale for all of
  them would round the small ones to nothing). The int8 GEMM (``torch._int_mm``, int32
  accumulation) is exact; the groups' products are summed in float64 with their scales. On an
  AVX2 CPU it takes 0.42x the time of a float32 GEMM, on AVX512-VNNI 0.13x (Zen 5, 4096 x 8192
  x 4608: 0.62 s with oneDNN held to AVX2 and 0.19 s, against 1.46 s in float32 and 0.36 s in
  bf16). Its rounding error is larger than bf16's (the bench's gemma pairs: ``|x - x'|/|x|``
  0.008 against 0.002), so the screen leaves more pairs open.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..gemm import block_starts
from ..jit import njit, prange
from .kernels import bf16_row

if TYPE_CHECKING:
    import torch

_CHUNK = 4096  # rows converted to bf16 at a time (bounds the float32 temporaries)


def to_bf16(X: np.ndarray) -> torch.Tensor:
    """X rounded to bf16 (nearest even, torch's conversion)."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(X)).to(torch.bfloat16)


def bits(X16: torch.Tensor) -> np.ndarray:
    """A bf16 tensor's values as uint16 bits (numba has no bf16), without a copy."""
    import torch
    return X16.view(torch.int16).numpy().view(np.uint16)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _bf16_norms(X, H, out):
    """Per row i of X and of its bf16 rounding H (uint16 bits): ``out[:, i]`` = ``|x|``,
    ``|x'|`` and ``|x - x'|`` (squares summed in float64 in any order, which lets the compiler
    vectorise; the difference of a float32 and its bf16 rounding is exact)."""
    for i in prange(X.shape[0]):
        h = bf16_row(H, i)
        s0 = s1 = s2 = 0.0
        for d in range(X.shape[1]):
            x = np.float64(X[i, d])
            y = np.float64(h[d])
            s0 += x * x
            s1 += y * y
            s2 += (x - y) * (x - y)
        out[0, i] = np.sqrt(s0)
        out[1, i] = np.sqrt(s1)
        out[2, i] = np.sqrt(s2)


class Bf16:
    """Rows rounded to bf16 (nearest even); products by torch's bf16 GEMM, accumulated in
    float32 (``gamma = D 2**-23``, at least the float32 bound ``D u / (1 - D u)`` of a D-term
    sum for D < 2**22) and stored as bf16."""

    extra_bytes = 0  # per pair of a block, besides the stored bf16 product

    def __init__(self, dim: int):
        self.gamma = dim * 2.0 ** -23

    @staticmethod
    def round(X: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """X rounded, and ``|x|``, ``|x'|``, ``|x - x'|`` per row (float64, a [3, n] array:
        each term contiguous, as the kernels that read it vectorise only then, 55-62 -> 33 ms
        for a screen block of persist 8192), both from one rounding, ``_CHUNK`` rows at a
        time."""
        import torch
        X16 = torch.empty(X.shape, dtype=torch.bfloat16)
        norms = np.empty((3, len(X)))
        for r0 in range(0, len(X), _CHUNK):
            x = X[r0:r0 + _CHUNK]
            X16[r0:r0 + _CHUNK] = torch.from_numpy(x)
            _bf16_norms(x, bits(X16[r0:r0 + _CHUNK]), norms[:, r0:r0 + _CHUNK])
        return X16, norms

    @staticmethod
    def cast(X: np.ndarray) -> torch.Tensor:
        """X rounded, without the norms (a fast copy)."""
        return to_bf16(X)

    @staticmethod
    def products(A16: torch.Tensor, B16: torch.Tensor, rows_per: int, tile: int,
                 progress: bool = False,
                 into: np.ndarray | None = None) -> Iterator[tuple[slice, int, np.ndarray]]:
        """``(rows, c0, H)`` for every block of ``A16 @ B16.T``: H the products as uint16 bits,
        in one reused buffer; or, with ``into`` ([n_A, n_B] uint16, C order; ``tile`` must then
        be all columns), computed in place in those rows of ``into``: no buffer to fill and
        copy (gemma 16384, EPYC: candidate pass 5.44-5.58 -> 5.10-5.29 s)."""
        import torch
        buf = torch.empty(0 if into is not None else rows_per * tile, dtype=torch.bfloat16)
        starts = block_starts(len(A16), len(B16), rows_per, tile)
        for r0, c0 in tqdm(starts, desc="bf16 GEMM blocks", unit="block", disable=not progress):
            r1, c1 = min(r0 + rows_per, len(A16)), min(c0 + tile, len(B16))
            H = (buf[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0) if into is None
                 else torch.from_numpy(into[r0:r1]).view(torch.bfloat16))
            torch.mm(A16[r0:r1], B16[c0:c1].T, out=H)
            yield slice(r0, r1), c0, bits(H)


def dim_groups(A: np.ndarray, B: np.ndarray, max_groups: int = 4,
               jump: float = 4.0) -> list[np.ndarray]:
    """The dimensions in groups of like scale, for :class:`Int8`: sorted by their root mean
    square over the rows of A and B, and split where it jumps by more than ``jump`` times
    (at the ``max_groups - 1`` largest such jumps)."""
    sq = np.einsum("ij,ij->j", A, A, dtype=np.float64) + np.einsum("ij,ij->j", B, B,
                                                                     dtype=np.float64)
    rms = np.sqrt(sq / max(1, len(A) + len(B)))
    order = np.argsort(rms, kind="stable")
    steps = np.diff(np.log(np.maximum(rms[order], 1e-300)))
    cuts = np.flatnonzero(steps > np.log(jump))
    cuts = np.sort(cuts[np.argsort(steps[cuts], kind="stable")[::-1][:max_groups - 1]])
    return np.split(order, cuts + 1)


@njit(parallel=True, cache=True)
def _quantize(X, order, starts, offs, flat, scales, norms):
    """Row i of X, dimensions ``order[starts[g]:starts[g + 1]]`` for group g: scale
    ``s = max |x| / 127`` (1 for a zero group) and ``q = rint(x / s)`` into the first columns of
    group g's [n, offs[g + 1] - offs[g]] block of ``flat`` (zeros after them);
    ``norms[:, i]`` = ``|x|``, ``|x'|``, ``|x - x'|`` with ``x' = s q``."""
    n = X.shape[0]
    for i in prange(n):
        s0 = s1 = s2 = 0.0
        for g in range(starts.shape[0] - 1):
            lo, hi = starts[g], starts[g + 1]
            top = 0.0
            for d in range(lo, hi):
                top = max(top, abs(np.float64(X[i, order[d]])))
            s = top / 127.0 if top > 0.0 else 1.0
            scales[i, g] = s
            width = offs[g + 1] - offs[g]
            base = n * offs[g] + i * width
            for d in range(lo, hi):
                x = np.float64(X[i, order[d]])
                q = min(127.0, max(-127.0, np.rint(x / s)))
                flat[base + d - lo] = np.int8(q)
                y = q * s
                s0 += x * x
                s1 += y * y
                s2 += (x - y) * (x - y)
            for d in range(hi - lo, width):
                flat[base + d] = 0
        norms[0, i] = np.sqrt(s0)
        norms[1, i] = np.sqrt(s1)
        norms[2, i] = np.sqrt(s2)


@njit(parallel=True, cache=True)
def _combine(Q, w, sa, sbt, r0, c0, out):
    """``out[t, j]`` = the bf16 bits (nearest even, from float32) of
    ``sum_g sa[r0 + t, g] sbt[g, c0 + j] Q[g, t w + j]``, summed in float64."""
    for t in prange(out.shape[0]):
        acc = np.zeros(w)
        for g in range(Q.shape[0]):
            a = sa[r0 + t, g]
            sb = sbt[g, c0:c0 + w]
            q = Q[g, t * w:(t + 1) * w]
            for j in range(w):
                acc[j] += a * sb[j] * np.float64(q[j])
        y = acc.astype(np.float32).view(np.uint32)
        for j in range(w):
            u = np.int64(y[j])
            out[t, j] = np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


class Int8:
    """Rows scaled to int8 per group of dimensions (:func:`dim_groups`); products by one int8
    GEMM per group (exact in int32 for D < 133,000), summed in float64 with the scales and
    rounded to float32, then to bf16. Before the bf16 rounding (the bound's ``2**-8 |h|``) the
    sum errs by at most ``(G + 2) 2**-53 sum_g |a'_g| |b'_g|`` in float64 and ``2**-24`` of
    itself in float32, in all less than ``2**-23 |a'| |b'|``: ``gamma`` (the bound puts
    ``gamma |b'|`` with ``|b - b'|``)."""

    gamma = 2.0 ** -23

    def __init__(self, A: np.ndarray, B: np.ndarray):
        groups = dim_groups(A, B)
        self.order = np.concatenate(groups).astype(np.int64)
        self.starts = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
        # a group's int8 columns, at least 2: torch 2.13's _int_mm on the CPU gets an inner
        # dimension of 1 wrong (tested); a zero column does not change the products
        self.offs = np.cumsum([0] + [max(2, len(g)) for g in groups]).astype(np.int64)
        self.extra_bytes = 4 * len(groups)  # the groups' int32 products of a block

    def round(self, X: np.ndarray) -> tuple[tuple[list, np.ndarray], np.ndarray]:
        """``((Q, s), norms)``: Q the groups' int8 rows (torch tensors, [n, D_g] each), s their
        scales [n, G], and ``|x|``, ``|x'|``, ``|x - x'|`` per row ([3, n])."""
        import torch
        n = len(X)
        flat = np.empty(n * self.offs[-1], np.int8)
        scales = np.empty((n, len(self.starts) - 1))
        norms = np.empty((3, n))
        _quantize(X, self.order, self.starts, self.offs, flat, scales, norms)
        Q = [torch.from_numpy(flat[n * lo:n * hi].reshape(n, hi - lo))
             for lo, hi in zip(self.offs[:-1], self.offs[1:])]
        return (Q, scales), norms

    def cast(self, X: np.ndarray) -> tuple[list, np.ndarray]:
        return self.round(X)[0]

    def products(self, PA: tuple[list, np.ndarray], PB: tuple[list, np.ndarray], rows_per: int,
                 tile: int, progress: bool = False,
                 into: np.ndarray | None = None) -> Iterator[tuple[slice, int, np.ndarray]]:
        """As :meth:`Bf16.products`, from the int8 rows of :meth:`round`."""
        import torch
        (QA, sa), (QB, sb) = PA, PB
        sbt = np.ascontiguousarray(sb.T)
        acc = torch.empty((len(QA), rows_per * tile), dtype=torch.int32)
        buf = np.empty(0 if into is not None else rows_per * tile, np.uint16)
        n_a, n_b = len(sa), len(sb)
        for r0, c0 in tqdm(block_starts(n_a, n_b, rows_per, tile), desc="int8 GEMM blocks",
                           unit="block", disable=not progress):
            r1, c1 = min(r0 + rows_per, n_a), min(c0 + tile, n_b)
            r, w = r1 - r0, c1 - c0
            for g in range(len(QA)):
                torch._int_mm(QA[g][r0:r1], QB[g][c0:c1].T, out=acc[g, :r * w].view(r, w))
            H = buf[:r * w].reshape(r, w) if into is None else into[r0:r1]
            _combine(acc.numpy(), w, sa, sbt, r0, c0, H)
            yield slice(r0, r1), c0, H


@functools.cache
def int8_available() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU (``torch._int_mm``)."""
    import torch
    try:
        a = torch.ones((16, 32), dtype=torch.int8)
        return bool(torch._int_mm(a, a.T)[0, 0] == 32)
    except (AttributeError, RuntimeError):
        return False
