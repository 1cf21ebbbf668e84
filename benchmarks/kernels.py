"""Kernel speed, each figure a ratio to references measured in the same run.

    python benchmarks/kernels.py              # on a GPU: the Triton kernels; on CPU: the torch paths only
    python benchmarks/kernels.py --codebook-sizes 513 --repeats 2   # a quick pass

Nearest code (N = 32 × 750 frames, d = 64, K ∈ {513, 2049, 16385}, fp32 and bf16) against
`torch.cdist` + `argmin` and against vector-quantize-pytorch's own quantize path, and next to the
memory-bandwidth lower bound (bytes read ÷ peak bandwidth).

Attention (GPU only), forward and forward + backward, bf16, against torch SDPA with the flash
backend forced (FlashAttention-2) and with the cuDNN backend, at Whisper shapes (1500 frames,
non-causal, d 64, 16 heads) and LLM shapes (1k–16k causal, d 128, GQA 32/8). TFLOP/s by the usual
convention: forward 4·B·H·N²·D, halved when causal; backward 2.5 × forward.
"""

from __future__ import annotations

import argparse
import platform

import torch
from vector_quantize_pytorch import VectorQuantize

from auralm.kernels import flash_attention, nearest_code

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
    parser.add_argument("--codebook-sizes", default="513,2049,16385", help="values of K for nearest code, commas")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"
    bandwidth = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    print(f"device: {name}; nearest code is {'Triton' if device.type == 'cuda' else 'the torch reference'}")
    print(
        f"{'K':>6} {'dtype':>9} {'ours ms':>9} {'cdist ms':>9} {'vs cdist':>9} {'vq-pt ms':>9} {'vs vq-pt':>9} {'bound ms':>9}"
    )
    for k in map(int, args.codebook_sizes.split(",")):
        for dtype in (torch.float32, torch.bfloat16):
            print(nearest_code_row(k, dtype, device, bandwidth, args.repeats))

    if device.type != "cuda":
        print("attention: needs a CUDA device (the kernel and the SDPA backends it is compared with)")
        return
    print(
        f"\n{'shape':34} {'pass':>8} {'ours TF/s':>10} {'FA2 TF/s':>9} {'vs FA2':>7} {'cuDNN TF/s':>11} {'vs cuDNN':>9}"
    )
    shapes = [(8, 16, 16, 1500, 64, False)] + [(16384 // n, 32, 8, n, 128, True) for n in (1024, 4096, 16384)]
    for shape in shapes:
        for backward in (False, True):
            print(attention_row(*shape, backward, device, args.repeats))


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


def attention_row(B, Hq, Hkv, N, D, causal, backward, device, repeats) -> str:
    q = torch.randn(B, Hq, N, D, device=device, dtype=torch.bfloat16, requires_grad=backward)
    k = torch.randn(B, Hkv, N, D, device=device, dtype=torch.bfloat16, requires_grad=backward)
    v = torch.randn(B, Hkv, N, D, device=device, dtype=torch.bfloat16, requires_grad=backward)
    grad = torch.randn_like(q)

    def run(fn):
        def step():
            out = fn()
            if backward:
                torch.autograd.grad(out, (q, k, v), grad)

        with torch.enable_grad():
            return bench(step, device, repeats)

    def sdpa(backend):
        def fn():
            with torch.nn.attention.sdpa_kernel(backend):  # SDPA backends want K/V heads repeated
                kk, vv = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
                return torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=causal)

        return fn

    flops = 4 * B * Hq * N * N * D / (2 if causal else 1) * (3.5 if backward else 1)
    ours = run(lambda: flash_attention(q, k, v, causal=causal))
    fa2 = run(sdpa(torch.nn.attention.SDPBackend.FLASH_ATTENTION))
    cudnn = run(sdpa(torch.nn.attention.SDPBackend.CUDNN_ATTENTION))
    label = f"B{B} H{Hq}/{Hkv} N{N} D{D}{' causal' if causal else ''}"
    return (
        f"{label:34} {'fwd+bwd' if backward else 'fwd':>8} {flops / ours / 1e12:10.0f} {flops / fa2 / 1e12:9.0f} "
        f"{fa2 / ours:7.2f} {flops / cudnn / 1e12:11.0f} {cudnn / ours:9.2f}"
    )


if __name__ == "__main__":
    with torch.no_grad():
        main()
