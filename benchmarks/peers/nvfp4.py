#!/usr/bin/env python3
"""PyTorch peers of the NVFP4 GEMM benchmark, on the same shapes and with the same method.

  python3 benchmarks/peers/nvfp4.py [--out DIR] [--shapes 4096x7168,...] [--m 1,4,...] [--trials 20] [--seed 1]

- cuBLAS BF16: a @ w.T with a bf16 [M, K], w bf16 [N, K].
- FP8: torch._scaled_mm with e4m3 operands and bf16 out; row-wise scales where this PyTorch
  and GPU run them, else one scale per tensor (the mode used is recorded per row).
- Device-to-device copy bandwidth: (read + write bytes) / time of a 1 GiB copy.

Each (shape, M) is a CUDA graph of R back-to-back calls rotating over S >= 3 weight sets
(at least 4x the L2 cache in total), timed with CUDA events; time per call = median over
trials of replay time / R (peers/harness.py, as benchmarks/harness.js does for ours). Writes
nvfp4_gemm-peers-<card>.json. Without PyTorch or a CUDA GPU it exits with status 3.
"""
import argparse
import os

import harness

SHAPES = "4096x7168,7168x2048,2048x7168,24576x1536,7168x16384"
MS = "1,4,16,32,64,256,1024,4096,16384"


def fp8_call(torch, a8_all, w8, M, N):
    """(fn(i) -> bf16 product over weight set i, mode) for the first scaled_mm form that runs
    here, or (None, why none did). Tried: row-wise, then tensor-wise scales; then both with M
    padded to a multiple of 16, as a serving stack would pad."""
    errors = []
    rows_options = [M] if M % 16 == 0 else [M, (M + 15) // 16 * 16]
    for rows in rows_options:
        a8 = a8_all[:rows]
        for mode in ("row-wise", "tensor-wise"):
            if mode == "row-wise":
                sa, sb = torch.ones(rows, 1, device="cuda"), torch.ones(1, N, device="cuda")
            else:
                sa, sb = torch.tensor(1.0, device="cuda"), torch.tensor(1.0, device="cuda")
            label = mode if rows == M else f"{mode}, M padded to {rows}"
            try:
                torch._scaled_mm(a8, w8[0].t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
                torch.cuda.synchronize()
            except (RuntimeError, TypeError) as e:
                errors.append(f"{label}: {str(e).splitlines()[0]}")
                continue
            sets = len(w8)

            def fn(i, a8=a8, sa=sa, sb=sb):
                return torch._scaled_mm(a8, w8[i % sets].t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

            return fn, label
    return None, "; ".join(errors)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=harness.RESULTS_DIR)
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--m", default=MS)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.m.split(",")]

    torch = harness.require_cuda()
    harness.seed_all(args.seed)
    gen = harness.generator(args.seed)
    props = torch.cuda.get_device_properties(0)
    l2 = harness.l2_bytes(props)
    stream = torch.cuda.Stream()
    copy = harness.copy_bandwidth()
    print(f"{props.name}: device-to-device copy {copy['tbs']:.3f} TB/s")

    def timed(fn, sets):
        """Median per-call milliseconds, R picked for a few ms per replay."""
        return harness.median(harness.time_launches_auto(fn, sets, args.trials, stream)[1])

    rows = []
    fp8_modes = set()
    for N, K in shapes:
        sets16 = harness.rotation_sets(N * K * 2, l2)
        sets8 = harness.rotation_sets(N * K, l2)
        w16 = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(sets16)]
        w8 = [torch.randn(N, K, device="cuda", generator=gen).to(torch.float8_e4m3fn) for _ in range(sets8)]
        a16_all = torch.randn(max(ms), K, device="cuda", dtype=torch.bfloat16, generator=gen)
        a8_all = a16_all.to(torch.float8_e4m3fn)
        for M in ms:
            a16 = a16_all[:M]
            out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            bf16 = timed(lambda i: torch.matmul(a16, w16[i % sets16].t(), out=out), sets16)
            call, mode = fp8_call(torch, a8_all, w8, M, N)
            fp8 = None
            if call is not None:
                fp8 = timed(call, sets8)
                fp8_modes.add(mode.split(",")[0])
            row = {"shape": f"{N}x{K}", "N": N, "K": K, "M": M, "bf16Ms": bf16, "fp8Ms": fp8, "fp8Mode": mode,
                   "bf16Tflops": 2 * M * N * K / (bf16 * 1e-3) / 1e12, "sets": {"bf16": sets16, "fp8": sets8}}
            rows.append(row)
            fp8_text = f"{fp8 * 1e3:.2f} us ({mode})" if fp8 is not None else f"n/a ({mode})"
            print(f"N={N} K={K} M={M}: bf16 {bf16 * 1e3:.2f} us ({row['bf16Tflops']:.1f} TFLOP/s)  fp8 {fp8_text}")
        del w16, w8, a16_all, a8_all
        torch.cuda.empty_cache()

    result = {
        "benchmark": "nvfp4_gemm_peers",
        **harness.header(props.name),
        "fp8Note": " / ".join(sorted(fp8_modes)) + " scales" if fp8_modes else "no scaled_mm mode that runs here",
        "method": "CUDA graph of R calls rotating over S weight sets (>= 4x L2), CUDA events, median over trials of replay time / R",
        "seed": args.seed,
        "l2CacheBytes": l2,
        "copy": copy,
        "rows": rows,
    }
    harness.write_json(os.path.join(args.out, f"nvfp4_gemm-peers-{result['card']}.json"), result)


if __name__ == "__main__":
    harness.run(main)
