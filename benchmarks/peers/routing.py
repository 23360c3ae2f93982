#!/usr/bin/env python3
"""PyTorch peer of benchmarks/routing.js: the same routing math written with torch ops, on the
same shapes and cases.

  route:   scores = sigmoid(logits); biased = scores + bias; each of the 8 groups scored by the
           sum of its two best biased scores (topk(2)); the 4 best groups kept (topk), the other
           groups' experts masked to -inf; torch.topk(8) of what is left; weights = the unbiased
           scores of the chosen experts / (their sum + 1e-20) * 2.5 (DeepSeek-V3's noaux_tc).
  layout:  contiguous: bincount per expert, counts padded to 128 rows, cumsum -> offsets, a
           stable argsort of the flattened ids, each pair's rank inside its expert, then the
           row -> pair map (scatter, -1 elsewhere) and its inverse. Masked: the same ranks, pairs
           with rank >= T dropped and counted, [experts, T] slots.

Each case is timed with CUDA events over back-to-back replays of a CUDA graph where capture
works, else eagerly; the JSON says which. Timing, the seeded generators and the JSON header
come from peers/harness.py.

  python3 benchmarks/peers/routing.py [--out FILE] [--seed 1] [--tokens 1,16,...]

--out defaults to benchmarks/results/routing-pytorch-<card>.json. Without PyTorch or a CUDA GPU
it exits with status 3.
"""
import argparse
import os

import harness

torch = None  # bound by main() once harness.require_cuda() has found PyTorch and a GPU

EXPERTS = 256
TOP_K = 8
GROUPS = 8
TOPK_GROUPS = 4
SCALE = 2.5
ALIGN = 128
TOKENS = [1, 16, 128, 4096, 16384]
MASKED_MAX_T = 128
WARMUP = 10
INNER = 20
REPS = 30


def route(logits, bias):
    T = logits.shape[0]
    scores = logits.sigmoid()
    biased = scores + bias.unsqueeze(0)
    group_scores = biased.view(T, GROUPS, -1).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = group_scores.topk(TOPK_GROUPS, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    expert_mask = group_mask.unsqueeze(-1).expand(T, GROUPS, EXPERTS // GROUPS).reshape(T, -1)
    masked = biased.masked_fill(expert_mask == 0, float("-inf"))
    ids = masked.topk(TOP_K, dim=-1)[1]
    w = scores.gather(1, ids)
    w = w / (w.sum(dim=-1, keepdim=True) + 1e-20) * SCALE
    return ids.to(torch.int32), w


def ranks(flat):
    """Stable order of the pairs by expert, and each pair's rank inside its expert."""
    n = flat.numel()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=EXPERTS)
    starts = torch.cumsum(counts, 0) - counts
    sorted_expert = flat[order]
    rank = torch.arange(n, device=flat.device) - starts[sorted_expert]
    return order, sorted_expert, rank, counts


def layout_contiguous(ids):
    T = ids.shape[0]
    flat = ids.flatten().long()
    order, sorted_expert, rank, counts = ranks(flat)
    padded = (counts + ALIGN - 1) // ALIGN * ALIGN
    offsets = torch.cat([padded.new_zeros(1), torch.cumsum(padded, 0)])
    row = offsets[sorted_expert] + rank
    rows = T * TOP_K + EXPERTS * (ALIGN - 1)
    source_index = torch.full((rows,), -1, dtype=torch.int32, device=ids.device).scatter_(0, row, order.to(torch.int32))
    row_index = torch.empty_like(flat, dtype=torch.int32).scatter_(0, order, row.to(torch.int32))
    return counts.to(torch.int32), offsets.to(torch.int32), source_index, row_index


def layout_masked(ids, max_per_expert):
    flat = ids.flatten().long()
    order, sorted_expert, rank, counts = ranks(flat)
    keep = rank < max_per_expert
    slot = torch.where(keep, sorted_expert * max_per_expert + rank, torch.full_like(rank, EXPERTS * max_per_expert))
    # a scratch slot past the end takes the dropped pairs, so the shapes stay fixed (graph capture)
    masked = torch.full((EXPERTS * max_per_expert + 1,), -1, dtype=torch.int32, device=ids.device)
    masked.scatter_(0, slot, order.to(torch.int32))
    row_index = torch.empty_like(flat, dtype=torch.int32).scatter_(0, order, torch.where(keep, slot, -1).to(torch.int32))
    dropped = (counts - max_per_expert).clamp_(min=0).sum()
    return counts.clamp(max=max_per_expert).to(torch.int32), masked[:-1].view(EXPERTS, max_per_expert), row_index, dropped


def time_case(fn, stream):
    timing = "cuda-graph"
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()  # warm-up before capture (allocator, lazy init)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
        replay = graph.replay
    except Exception as e:  # capture can refuse an op; time eagerly then
        timing = f"eager ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        torch.cuda.synchronize()
        replay = fn
    ms = harness.median(harness.time_replays(replay, stream, REPS, replays=INNER, warmup=WARMUP))
    return ms, timing


def run_tokens(T, seed):
    gen = harness.generator(seed * 65536 + T)
    logits = torch.randn(T, EXPERTS, device="cuda", generator=gen)
    bias = torch.randn(EXPERTS, device="cuda", generator=gen) * 0.01
    stream = torch.cuda.Stream()
    cases = [
        ("route", lambda: route(logits, bias)),
        (f"route + layout (align {ALIGN})", lambda: layout_contiguous(route(logits, bias)[0])),
    ]
    if T <= MASKED_MAX_T:
        cases.append(("route + layout (masked)", lambda: layout_masked(route(logits, bias)[0], T)))
    rows = []
    for name, fn in cases:
        ms, timing = time_case(fn, stream)
        rows.append({"case": name, "T": T, "ms": ms, "timing": timing})
        print(f"  {name}, T={T}: {ms * 1e3:.1f} us ({timing})", flush=True)
    return rows


def main():
    global torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="JSON file to write (default benchmarks/results/routing-pytorch-<card>.json)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    torch = harness.require_cuda()
    harness.seed_all(args.seed)
    dev = torch.cuda.get_device_name(0)
    print(f"PyTorch {torch.__version__} on {dev}", flush=True)
    cases = []
    for T in tokens:
        cases += run_tokens(T, args.seed)
    timings = sorted({c["timing"].split(" ")[0] for c in cases})
    result = {
        "benchmark": "routing-pytorch",
        **harness.header(dev),
        "timing": "timed as " + " / ".join(timings),
        "seed": args.seed,
        "cases": cases,
    }
    harness.write_json(args.out or os.path.join(harness.RESULTS_DIR, f"routing-pytorch-{result['card']}.json"), result)


if __name__ == "__main__":
    harness.run(main)
