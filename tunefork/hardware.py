"""What the machine offers, read once: device, native bf16 on the CPU, memory."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    cpu_bf16: bool  # AVX512-BF16 or AMX: bf16 autocast is native, not emulated
    cuda_bf16: bool
    ram_bytes: int
    cpus: int


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def detect() -> Hardware:
    import torch

    cuda = torch.cuda.is_available()
    flags = _cpu_flags()
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return Hardware(
        device="cuda" if cuda else "cpu",
        cpu_bf16=bool(flags & {"avx512_bf16", "amx_bf16"}),
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        ram_bytes=int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 0,
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )
