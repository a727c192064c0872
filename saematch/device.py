"""Pick the compute device: CUDA when present, CPU otherwise.

The decision does not import torch where no NVIDIA driver is installed: the import costs about
2 s, once per job of a run with hundreds of small jobs, and the CPU paths need only numpy.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DRIVER_NODES = ("/dev/nvidiactl", "/dev/dxg")  # Linux driver, WSL


def device_name(requested: str = "auto") -> str:
    """``auto`` means ``cuda`` if a CUDA device is usable, else ``cpu``; anything else is kept."""
    if requested != "auto":
        return requested
    if not any(os.path.exists(p) for p in _DRIVER_NODES):
        return "cpu"
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_cpu(requested: str = "auto") -> bool:
    """Whether :func:`device_name` is the CPU (without importing torch where it needs not)."""
    return device_name(requested).split(":")[0] == "cpu"


def pick_device(requested: str = "auto") -> torch.device:
    """:func:`device_name` as a ``torch.device``."""
    import torch
    return torch.device(device_name(requested))
