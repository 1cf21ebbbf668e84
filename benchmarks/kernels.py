"""Kernel speed, each figure a ratio to references measured in the same run.

    python benchmarks/kernels.py              # on a GPU: the Triton kernels; on CPU: the torch paths only

Nearest code (N = 32 × 750 frames, d = 64, K ∈ {513, 2049, 16385}, fp32 and bf16) against
`torch.cdist` + `argmin` and against vector-quantize-pytorch's own quantize path, and next to the
memory-bandwidth lower bound (bytes read ÷ peak bandwidth). Attention joins when its kernel lands.
"""

from __future__ import annotations

import argparse
import platform

import torch
from vector_quantize_pytorch import VectorQuantize

from auralm.kernels import nearest_code

# Peak memory bandwidth by GPU name, bytes/s (vendor figures).
PEAK_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "A100-SXM4-80GB": 2.04e12}


def bench(fn, device: torch.device, repeats: int = 20) -> float:
    """Median seconds of fn() after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            import time

            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"
    bandwidth = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    print(f"device: {name}; nearest code is {'Triton' if device.type == 'cuda' else 'the torch reference'}")
    print(
        f"{'K':>6} {'dtype':>9} {'ours ms':>9} {'cdist ms':>9} {'vs cdist':>9} {'vq-pt ms':>9} {'vs vq-pt':>9} {'bound ms':>9}"
    )
    for k in (513, 2049, 16385):
        for dtype in (torch.float32, torch.bfloat16):
            print(nearest_code_row(k, dtype, device, bandwidth, args.repeats))


def nearest_code_row(k: int, dtype: torch.dtype, device: torch.device, bandwidth: float | None, repeats: int) -> str:
    n, d = 32 * 750, 64
    x = torch.randn(n, d, device=device, dtype=dtype)
    codebook = torch.randn(k, d, device=device, dtype=dtype)
    vq = VectorQuantize(dim=d, codebook_size=k).to(device).eval()
    ours = bench(lambda: nearest_code(x, codebook), device, repeats)
    cdist = bench(lambda: torch.cdist(x.float(), codebook.float()).argmin(-1), device, repeats)
    vq_pt = bench(lambda: vq(x.float()[None]), device, repeats)
    bytes_read = (x.numel() + codebook.numel()) * x.element_size() + n * 8  # inputs + int64 indices
    bound = f"{bytes_read / bandwidth * 1e3:9.3f}" if bandwidth else f"{'?':>9}"
    return (
        f"{k:6} {str(dtype).removeprefix('torch.'):>9} {ours * 1e3:9.3f} {cdist * 1e3:9.3f} {cdist / ours:9.2f} "
        f"{vq_pt * 1e3:9.3f} {vq_pt / ours:9.2f} {bound}"
    )


if __name__ == "__main__":
    with torch.inference_mode():
        main()
