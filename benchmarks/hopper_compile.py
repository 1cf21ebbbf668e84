"""What the Triton compiler makes of each kernel for Hopper (sm_90), on any machine, GPU or not.

    python benchmarks/hopper_compile.py            # a table: registers, spills, shared memory, tensor-core ops
    python benchmarks/hopper_compile.py --json     # the same rows as JSON (tests/kernels/test_hopper_compile.py)

Every autotuning configuration of every kernel is compiled with Triton's own compiler and ptxas for
compute capability 9.0, as a launch on an H100 would compile it (16-byte aligned pointers and strides,
as contiguous heads give), then read back with cuobjdump: registers per thread, bytes spilled to
local memory (the stack), shared memory per block (at most 227 KB on H100), and the count of HGMMA
(Hopper's warpgroup matrix instructions) against HMMA (the older warp-level ones) in the SASS.
This checks builds, not speed: timings need a GPU (benchmarks/kernels.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from auralm.kernels import attention, vq

HOPPER = GPUTarget("cuda", 90, 32)
HOPPER_SHARED_MEMORY = 227 * 1024  # per block, the most an H100 allows
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# Pointer arguments that are not of the input dtype; scalar arguments that are floats or plain counts.
POINTER_TYPES = {
    **dict.fromkeys(["lse_ptr", "delta_ptr", "dq_ptr"], "*fp32"),
    **dict.fromkeys(["q_start_ptr", "q_len_ptr", "k_start_ptr", "k_len_ptr"], "*i32"),
    "indices_ptr": "*i64",
}
FLOATS = {"scale", "scale_log2"}
COUNTS = {"H", "GROUP", "N", "K"}  # anything else an int is a stride: a multiple of 16 for contiguous heads


def compile_for_hopper(kernel, constexprs: dict, num_warps: int, num_stages: int, dtype: str = "bf16"):
    """The compiled kernel (triton CompiledKernel) of a @triton.jit function for sm_90."""
    signature, attributes = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = POINTER_TYPES.get(name, f"*{dtype}")
            attributes[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in COUNTS:
                attributes[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attributes)
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages})


def inspect(compiled) -> dict[str, int]:
    """registers, spill bytes, shared bytes, HGMMA and HMMA counts of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([f"{TOOLS}/cuobjdump", "-res-usage", cubin.name], capture_output=True, text=True)
        sass = subprocess.run([f"{TOOLS}/cuobjdump", "-sass", cubin.name], capture_output=True, text=True)
    usage.check_returncode()
    sass.check_returncode()
    return {
        "registers": int(re.search(r"REG:(\d+)", usage.stdout).group(1)),
        "spill_bytes": int(re.search(r"STACK:(\d+)", usage.stdout).group(1)),
        "shared_bytes": compiled.metadata.shared,
        "hgmma": len(re.findall(r"\bHGMMA\b", sass.stdout)),
        "hmma": len(re.findall(r"\bHMMA\b", sass.stdout)),
    }


def cases():
    """(kernel name, shape label, autotuner, constexprs, dtype) for every kernel at the shapes that matter."""
    for name, tuned in (
        ("attention forward", attention._attention_forward),
        ("attention backward dK/dV", attention._attention_backward_dkdv),
        ("attention backward dQ", attention._attention_backward_dq),
    ):
        for head_dim, causal in ((64, False), (128, True), (80, False)):
            label = f"d {head_dim}, {'causal' if causal else 'non-causal'}"
            yield (
                name,
                label,
                tuned,
                {"CAUSAL": causal, "HEAD_DIM": head_dim, "BLOCK_D": 128 if head_dim > 64 else 64},
                "bf16",
            )
    for dtype in ("bf16", "fp32"):
        for metric in ("cosine", "euclidean"):
            constexprs = {"METRIC": metric, "D": 64, "BLOCK_D": 64, "PRECISION": "tf32x3"}
            yield "nearest code", f"d 64, {metric}, {dtype}", vq._nearest_code_kernel, constexprs, dtype


def rows() -> list[dict]:
    table = []
    for name, label, tuned, constexprs, dtype in cases():
        for config in tuned.configs:
            compiled = compile_for_hopper(
                tuned.fn, {**constexprs, **config.kwargs}, config.num_warps, config.num_stages, dtype
            )
            blocks = "×".join(str(v) for v in config.kwargs.values())
            table.append({
                "kernel": name, "shape": label, "blocks": blocks, "warps": config.num_warps,
                "stages": config.num_stages, **inspect(compiled),
            })  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    table = rows()
    if args.json:
        print(json.dumps(table))
        return
    print(f"Triton {triton.__version__}, target sm_90; shared memory limit {HOPPER_SHARED_MEMORY} bytes")
    print("| kernel | shape | blocks | warps | stages | registers | spilled bytes | shared KB | HGMMA | HMMA |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(
            f"| {r['kernel']} | {r['shape']} | {r['blocks']} | {r['warps']} | {r['stages']} | {r['registers']} "
            f"| {r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} | {r['hgmma']} | {r['hmma']} |"
        )


if __name__ == "__main__":
    main()
