"""Autotuned Triton kernels, launched the same way on a GPU and in the interpreter.

On a GPU, `triton.autotune` times each configuration on the first call for a new key (say, a head
dim and dtype) and keeps the fastest, on disk too. The interpreter (TRITON_INTERPRET=1, the CPU
tests) cannot time anything, so it is handed its blocks: a few large tiles, since each interpreted
step costs the same whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable

import triton


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
