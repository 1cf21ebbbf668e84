"""Where a kernel runs, and autotuned Triton kernels launched the same way on a GPU and in the interpreter.

`backend(t)` is the one place that decides: compiled Triton for CUDA tensors, Triton's interpreter for
CPU tensors under TRITON_INTERPRET=1 (the CPU tests), else the kernel's plain-torch reference.

On a GPU, `triton.autotune` times each configuration on the first call for a new key (say, a head
dim and dtype) and keeps the fastest, on disk too. The interpreter (TRITON_INTERPRET=1, the CPU
tests) cannot time anything, so it is handed its blocks: a few large tiles, since each interpreted
step costs the same whatever its size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Literal

import torch
import triton

LOG2E = math.log2(math.e)  # the kernels' softmax runs in base 2: exp(x) = 2^(x·log₂e)
MAX_HEAD_DIM = 256  # the attention kernels' widest head: a tile of it per operand stays on chip

Backend = Literal["gpu", "interpreter", "torch"]


def backend(t: torch.Tensor) -> Backend:
    """Where a Triton kernel over tensor t runs: "gpu" (compiled), "interpreter" (CPU tensors with
    TRITON_INTERPRET=1, read when kernels are defined, so set it before importing auralm) or "torch"."""
    if t.is_cuda:
        return "gpu"
    return "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"


def configs(shapes: list[tuple[int, int, int, int]], names: tuple[str, str]) -> list[triton.Config]:
    """One Config per (block, block, warps, pipeline stages); `names` are the two block parameters."""
    return [
        triton.Config({names[0]: first, names[1]: second}, num_warps=warps, num_stages=stages)
        for first, second, warps, stages in shapes
    ]


def autotuned(candidates: list[triton.Config], key: list[str]):
    """Decorator over a @triton.jit kernel: times `candidates` once per value of the `key` arguments."""
    return triton.autotune(candidates, key=key, cache_results=True)


def launch(
    kernel,
    grid: Callable[[dict], tuple[int, ...]],
    args: tuple,
    interpreter_blocks: dict[str, int] | None,
    **constexprs,
) -> None:
    """Run an autotuned kernel: the tuner's pick on a GPU (interpreter_blocks None), else the given
    blocks. grid(blocks) is the launch grid for a choice of blocks."""
    if interpreter_blocks is None:
        kernel[grid](*args, **constexprs)
    else:
        kernel.fn[grid(interpreter_blocks)](*args, **interpreter_blocks, **constexprs)
