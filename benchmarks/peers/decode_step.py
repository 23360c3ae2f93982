#!/usr/bin/env python3
"""PyTorch peer of benchmarks/decode_step.js: a plain BF16 decode step of the same slice, one
token per request per step (no speculation), B = 1, 16, 64, 256.

  layers:  the BF16 MoE block of peers/moe.py (same routing math: sigmoid, correction bias,
           8 groups keeping 4, top-8, scale 2.5; shared expert), x = block(x) per layer;
  LM head: logits = x @ head.T in bf16.

Random weights (same shapes; BF16 time does not depend on the values). A layer holds 22 GiB, so
only as many layers as fit in --budget-gib (and in free memory) are built, at least 2; with fewer
than --layers the step time is the LM head's plus the measured per-layer time x --layers. Per B
the faster of torch._grouped_mm (under a CUDA graph where it captures) and a loop over experts
(which reads the counts back to the host, so it runs eagerly).

  python3 benchmarks/peers/decode_step.py --out FILE [--layers 4] [--batch 1,16,64,256] [--budget-gib 100]

Without PyTorch or a CUDA GPU it exits with status 3.
"""
import argparse

import harness
import moe as ref

torch = None

SETTINGS = {"hidden": 7168, "experts": 256, "inner": 2048, "sharedInner": 2048, "k": 8, "groups": 8, "topkGroups": 4, "scale": 2.5}
VOCAB = 129280
STD = 0.02
WARMUP = 3
REPLAYS = 3
TRIALS = 10
HEADROOM = 6 << 30  # activations, graph pools, cuBLAS workspaces


def layer_bytes(s):
    H, E, I, Is = s["hidden"], s["experts"], s["inner"], s["sharedInner"]
    return 2 * (E * 3 * I * H + 3 * Is * H + E * H) + 4 * E


def build_layer(s, gen):
    H, E, I, Is = s["hidden"], s["experts"], s["inner"], s["sharedInner"]

    def normal(*shape, std=STD, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype, device="cuda").normal_(0, std, generator=gen)

    return {
        "router": normal(E, H),
        "bias": normal(E, std=0.01, dtype=torch.float32),
        "w13": normal(E, 2 * I, H),
        "w2": normal(E, H, I),
        "sw13": normal(2 * Is, H),
        "sw2": normal(H, Is),
    }


def timed(fn, stream, capture):
    """Median milliseconds per call; under a CUDA graph where `capture` and capture works."""
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.synchronize()
    timing, replay, graph = "eager", fn, None
    if capture:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                fn()
            replay, timing = graph.replay, "cuda-graph"
        except Exception as e:  # noqa: BLE001 - an op that refuses capture: time eagerly
            graph = None
            timing = f"eager ({type(e).__name__})"
            torch.cuda.synchronize()
    ms = harness.median(harness.time_replays(replay, stream, TRIALS, replays=REPLAYS, warmup=WARMUP))
    del graph
    return ms, timing


def main():
    global torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--layers", type=int, default=4, help="MoE layers of the step (ours)")
    ap.add_argument("--batch", default="1,16,64,256", help="requests per step")
    ap.add_argument("--budget-gib", type=float, default=100.0, help="memory the BF16 weights may take")
    ap.add_argument("--seed", type=int, default=1)
    args, _ = ap.parse_known_args()  # the run script passes ours' arguments too
    batches = [int(b) for b in args.batch.split(",")]
    torch = harness.require_cuda()
    ref.torch = torch
    s = SETTINGS
    H = s["hidden"]
    dev = torch.cuda.get_device_name(0)
    free, _ = torch.cuda.mem_get_info()
    head_bytes = 2 * VOCAB * H
    budget = min(args.budget_gib * 2**30, free - HEADROOM)
    fit = int((budget - head_bytes) // layer_bytes(s))
    n = min(args.layers, fit)
    print(f"PyTorch {torch.__version__} on {dev}: {n} of {args.layers} BF16 layers fit ({layer_bytes(s) / 2**30:.1f} GiB each, budget {budget / 2**30:.0f} GiB)", flush=True)
    if n < min(2, args.layers):
        raise RuntimeError(f"only {max(fit, 0)} BF16 layers fit in {budget / 2**30:.0f} GiB; need 2")
    gen = harness.generator(args.seed)
    layers = [build_layer(s, gen) for _ in range(n)]
    head = torch.empty(VOCAB, H, dtype=torch.bfloat16, device="cuda").normal_(0, STD, generator=gen)
    grouped = ref.grouped_works(s)
    stream = torch.cuda.Stream()
    rows = []
    for B in batches:
        x = torch.randn(B, H, device="cuda", generator=gen).to(torch.bfloat16)

        def layers_step(use_grouped):
            y = x
            for lw in layers:
                y, _ = ref.block(y, lw["router"], lw["bias"], lw, s, use_grouped)
            return y

        with torch.cuda.stream(stream):
            distinct = []
            y = x
            for lw in layers:
                y, ids = ref.block(y, lw["router"], lw["bias"], lw, s, grouped)
                distinct.append(int(ids.unique().numel()))
        stream.synchronize()
        head_ms, _ = timed(lambda: y @ head.t(), stream, True)
        variants = {}
        if grouped:
            variants["torch._grouped_mm"] = timed(lambda: layers_step(True) @ head.t(), stream, True)
        variants["loop over experts"] = timed(lambda: layers_step(False) @ head.t(), stream, False)
        method = min(variants, key=lambda m: variants[m][0])
        measured, timing = variants[method]
        per_layer = (measured - head_ms) / n
        ms = head_ms + per_layer * args.layers
        rows.append({
            "B": B, "ms": ms, "measuredMs": measured, "lmHeadMs": head_ms, "perLayerMs": per_layer,
            "method": method, "timing": timing, "tokensPerSecond": B / (ms / 1e3),
            "variantsMs": {m: v[0] for m, v in variants.items()}, "distinctExperts": distinct,
        })
        print(f"  B={B}: {ms:.3f} ms per step ({method}, {timing}; measured {measured:.3f} ms over {n} layers), {B / (ms / 1e3):.0f} tokens/s", flush=True)
    result = {
        "benchmark": "decode_step-pytorch",
        **harness.header(dev),
        "layersRequested": args.layers,
        "layersMeasured": n,
        "scaled": n < args.layers,
        "grouped": grouped,
        "settings": {**s, "vocab": VOCAB, "budgetGiB": args.budget_gib, "warmup": WARMUP, "replays": REPLAYS, "trials": TRIALS},
        "rows": rows,
    }
    harness.write_json(args.out, result)


if __name__ == "__main__":
    harness.run(main)
