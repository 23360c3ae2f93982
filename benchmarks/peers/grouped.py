#!/usr/bin/env python3
"""PyTorch peers of the grouped NVFP4 expert GEMM benchmark (benchmarks/grouped.js), same
shapes, same cases, same method.

  python3 benchmarks/peers/grouped.py [--out DIR] [--decode 1,8,32,128] [--prefill 4096,16384] [--trials 20] [--seed 1]

Per (op, phase, T), on S random top-8 routings (rows sorted by expert, no padding):
- cuBLAS BF16 on one GEMM of the same flops: [T * 8, K] x [K, N];
- torch._grouped_mm in BF16 with the experts' row offsets, where this PyTorch has it;
- a loop of cuBLAS BF16 GEMMs, one per expert with rows.
Each is a CUDA graph of R calls rotating over the S routings, timed with CUDA events (median of
replay time / R, peers/harness.py). Writes grouped_gemm-peers-<card>.json. Without PyTorch or a
CUDA GPU it exits with status 3.
"""
import argparse
import os

import harness

TOP_K = 8
# (op, experts, N, K), as benchmarks/grouped.js
OPS = [("w13+swiglu", 256, 4096, 7168), ("w2", 256, 7168, 2048)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=harness.RESULTS_DIR)
    p.add_argument("--decode", default="1,8,32,128")
    p.add_argument("--prefill", default="4096,16384")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    cases = [("decode", int(t)) for t in args.decode.split(",") if t] + [("prefill", int(t)) for t in args.prefill.split(",") if t]

    torch = harness.require_cuda()
    harness.seed_all(args.seed)
    gen = harness.generator(args.seed)
    props = torch.cuda.get_device_properties(0)
    l2 = harness.l2_bytes(props)
    stream = torch.cuda.Stream()
    copy = harness.copy_bandwidth()
    grouped_mm = getattr(torch, "_grouped_mm", None)
    grouped_note = "available" if grouped_mm is not None else "not in this PyTorch"
    print(f"{props.name}: device-to-device copy {copy['tbs']:.3f} TB/s; torch._grouped_mm {grouped_note}")

    def timed(fn, sets):
        return harness.median(harness.time_launches_auto(fn, sets, args.trials, stream)[1])

    rows = []
    for op, E, N, K in OPS:
        w = torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16, generator=gen)
        w_t = w.transpose(-2, -1)
        for phase, T in cases:
            pairs = T * TOP_K
            expert_bytes = N * K * 2
            sets = harness.rotation_sets(min(E, pairs) * expert_bytes, l2) if phase == "decode" else 2
            routes = []
            for _ in range(sets):
                ids = torch.rand(T, E, device="cuda", generator=gen).topk(TOP_K, dim=1).indices.flatten()
                counts = torch.bincount(ids, minlength=E)
                offs = torch.cumsum(counts, 0).to(torch.int32)
                routes.append((counts.tolist(), offs))
            x = torch.randn(pairs, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            out = torch.empty(pairs, N, device="cuda", dtype=torch.bfloat16)
            w_flat = w[0]

            bf16 = timed(lambda i: torch.matmul(x, w_flat.t(), out=out), sets)

            def loop(i):
                counts = routes[i % sets][0]
                start = 0
                for e, c in enumerate(counts):
                    if c:
                        torch.matmul(x[start:start + c], w[e].t(), out=out[start:start + c])
                    start += c

            loop_ms = timed(loop, sets)
            grouped = None
            if grouped_mm is not None:
                try:
                    grouped_mm(x, w_t, offs=routes[0][1], out_dtype=torch.bfloat16)
                    torch.cuda.synchronize()
                    grouped = timed(lambda i: grouped_mm(x, w_t, offs=routes[i % sets][1], out_dtype=torch.bfloat16), sets)
                except (RuntimeError, TypeError) as e:
                    grouped_note = f"refused here: {str(e).splitlines()[0]}"
            row = {"op": op, "phase": phase, "T": T, "E": E, "N": N, "K": K, "bf16Ms": bf16, "groupedMmMs": grouped,
                   "loopMs": loop_ms, "sets": sets}
            rows.append(row)
            g = f"{grouped * 1e3:.1f} us" if grouped is not None else "n/a"
            print(f"{op} {phase} T={T}: bf16 same flops {bf16 * 1e3:.1f} us, _grouped_mm {g}, loop {loop_ms * 1e3:.1f} us")
            del x, out, routes
            torch.cuda.empty_cache()
        del w, w_t
        torch.cuda.empty_cache()

    result = {
        "benchmark": "grouped_gemm_peers",
        **harness.header(props.name),
        "groupedMmNote": grouped_note,
        "method": "CUDA graph of R calls rotating over S routings, CUDA events, median over trials of replay time / R",
        "seed": args.seed,
        "copy": copy,
        "rows": rows,
    }
    harness.write_json(os.path.join(args.out, f"grouped_gemm-peers-{result['card']}.json"), result)


if __name__ == "__main__":
    harness.run(main)
