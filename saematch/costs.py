"""Blockwise cost matrices between the feature vectors of two SAEs.

The cost of pairing feature i of layer A with feature j of layer B is ``||a_i - b_j||^2``,
computed as ``|a_i|^2 + |b_j|^2 - 2 a_i.b_j`` so that any block is one GEMM (torch, on CUDA
when present).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .atomic import atomic_path
from .device import pick_device


def cost_blocks(A: np.ndarray, B: np.ndarray, block: int = 4096, device: str = "auto",
                progress: bool = False) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, C[rows, :])`` for the squared-distance matrix, ``block`` rows at a time.

    Peak memory is ``block * n`` floats on the device plus both inputs; the GEMM runs in
    float32 and the norms are added in float64 before rounding back, then clamped at 0.
    """
    dev = pick_device(device)
    tA = torch.from_numpy(A).to(dev)
    tB = torch.from_numpy(B).to(dev)
    # column norms chunk by chunk: a float64 copy of all of B would double its memory
    nb = torch.cat([(tB[i:i + block].double() ** 2).sum(1) for i in range(0, len(tB), block)])
    starts = range(0, A.shape[0], block)
    for start in tqdm(starts, desc="cost blocks", unit="block", disable=not progress):
        rows = slice(start, min(start + block, A.shape[0]))
        a = tA[rows]
        na = (a.double() ** 2).sum(1)
        c = (na[:, None] + nb[None, :] - 2.0 * (a @ tB.T).double()).clamp_min_(0.0)
        yield rows, c.float()


def cost_matrix(A: np.ndarray, B: np.ndarray, block: int = 4096,
                device: str = "auto") -> np.ndarray:
    """The dense [n_A, n_B] squared-distance matrix (float32), built blockwise."""
    out = np.empty((A.shape[0], B.shape[0]), dtype=np.float32)
    for rows, c in cost_blocks(A, B, block, device):
        out[rows] = c.cpu().numpy()
    return out


def nearest(A: np.ndarray, B: np.ndarray, block: int = 4096,
            device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """For every row of A, its nearest row of B and that cost: ``argmin_j ||a_i - b_j||^2``
    (the first on ties) and the minimum, by one blockwise GEMM pass (``cost_blocks``) that keeps
    only the row minima: memory ``block * n_B`` floats, whatever the sizes."""
    partner = np.empty(A.shape[0], dtype=np.int64)
    cost = np.empty(A.shape[0], dtype=np.float64)
    for rows, c in cost_blocks(A, B, block, device, progress=True):
        best, idx = c.min(dim=1)
        partner[rows], cost[rows] = idx.cpu().numpy(), best.double().cpu().numpy()
    return partner, cost


def write_cost_matrix(path: str | os.PathLike, A: np.ndarray, B: np.ndarray, *,
                      attrs: dict, block: int = 4096, device: str = "auto") -> None:
    """Stream the cost matrix into HDF5 dataset ``cost`` block by block, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        ds = h5.create_dataset("cost", shape=(A.shape[0], B.shape[0]), dtype="f4",
                               chunks=(min(block, A.shape[0]), B.shape[0]))
        for rows, c in cost_blocks(A, B, block, device, progress=True):
            ds[rows] = c.cpu().numpy()
        for k, v in attrs.items():
            h5.attrs[k] = v
