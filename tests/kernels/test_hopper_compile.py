"""Every GPU configuration of every kernel builds for Hopper (sm_90), checked without a GPU: Triton's
compiler and ptxas run here as an H100 launch would run them (benchmarks/hopper_compile.py)."""

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.hopper_compile import HOPPER_SHARED_MEMORY

ROOT = Path(__file__).parents[2]


def test_every_configuration_builds_for_hopper_on_tensor_cores():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    result = subprocess.run(
        [sys.executable, "benchmarks/hopper_compile.py", "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    kernels = {row["kernel"] for row in rows}
    assert kernels == {"attention forward", "attention backward dK/dV", "attention backward dQ", "nearest code"}
    spills = defaultdict(list)
    for row in rows:
        where = f"{row['kernel']} ({row['shape']}, blocks {row['blocks']}, {row['warps']} warps)"
        assert row["shared_bytes"] <= HOPPER_SHARED_MEMORY, f"{where} needs more shared memory than an H100 has"
        assert row["hgmma"] > 0, f"{where} uses no warpgroup matrix instruction"
        spills[row["kernel"], row["shape"]].append(row["spill_bytes"])
    # the autotuner always has at least one configuration that keeps everything in registers
    assert all(min(bytes_) == 0 for bytes_ in spills.values()), dict(spills)
