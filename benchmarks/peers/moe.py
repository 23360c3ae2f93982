#!/usr/bin/env python3
"""PyTorch peer of benchmarks/moe.js: a BF16 MoE block with the same math, on the layer and
inputs benchmarks/moe.js wrote to a folder (raw .bin files and manifest.json).

  router:  logits = x.float() @ w.float().T; DeepSeek-V3's noaux_tc routing (sigmoid scores,
           correction bias for selection, 8 groups scored by their two best, 4 kept, top-8,
           weights renormalized and scaled by 2.5).
  experts: the pairs sorted by expert (stable), then torch._grouped_mm for w13 and w2 where it
           runs (else a loop over the experts that hold pairs, which syncs with the host), SwiGLU
           between them (gate = the first half of w13's rows), the gate weights applied in f32
           and summed per token with index_add_.
  shared:  silu(x @ gate.T) * (x @ up.T) @ w2.T, in bf16; added in f32, rounded once to bf16.

Two weight sets: the original BF16 weights (before quantization: windows of the random pools
moe.js drew them from) and the NVFP4 weights dequantized (e2m1 * e4m3 scale * global scale in
f32, rounded to bf16, as dequantizeNvfp4 does). The block is timed with the original weights
under a CUDA graph where capture works (else eagerly); for every T both outputs and the expert
choice go back to the folder for moe.js to compare with its own output.

  python3 benchmarks/peers/moe.py --bundle DIR [--out FILE]

Without PyTorch or a CUDA GPU it exits with status 3.
"""
import argparse
import json
import os

import harness

torch = None

WARMUP = 5
REPLAYS = 10
TRIALS = 20

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def load(bundle, manifest, name):
    m = manifest["tensors"][name]
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "u8": torch.uint8, "fp8e4m3": torch.uint8, "i32": torch.int32}[m["dtype"]]
    with open(os.path.join(bundle, m["file"]), "rb") as f:
        raw = bytearray(f.read())
    return torch.frombuffer(raw, dtype=dtype).reshape(m["shape"]).cuda()


def dequantize(data, scales, gs):
    """[N, K/2] codes, [N, K/16] e4m3 scales, a global scale -> bf16 [N, K]."""
    lut = torch.tensor(E2M1, dtype=torch.float32, device=data.device)
    n = data.shape[0]
    v = torch.stack([lut[(data & 0xF).long()], lut[(data >> 4).long()]], dim=-1).reshape(n, -1)
    s = scales.view(torch.float8_e4m3fn).float().repeat_interleave(16, dim=1)
    return ((v * s) * gs).to(torch.bfloat16)


def weights(bundle, manifest, s):
    E, H, I, Is = s["experts"], s["hidden"], s["inner"], s["sharedInner"]
    pool13, pool2 = load(bundle, manifest, "pool13"), load(bundle, manifest, "pool2")
    win = manifest["windows"]
    original = {
        "w13": torch.stack([pool13[o:o + 2 * I] for o in win["w13"]]),
        "w2": torch.stack([pool2[o:o + H] for o in win["w2"]]),
        "sw13": pool13[win["shared_w13"][0]:win["shared_w13"][0] + 2 * Is].contiguous(),
        "sw2": pool2[win["shared_w2"][0]:win["shared_w2"][0] + H].contiguous(),
    }
    deq = {}
    for name, key, count in [("w13", "w13", E), ("w2", "w2", E), ("shared_w13", "sw13", 1), ("shared_w2", "sw2", 1)]:
        data, scales, gs = (load(bundle, manifest, f"{name}.{p}") for p in ("data", "scales", "global"))
        if count == 1:
            deq[key] = dequantize(data, scales, gs[0])
        else:
            deq[key] = torch.stack([dequantize(data[e], scales[e], gs[e]) for e in range(count)])
        del data, scales
    return original, deq


def route(logits, bias, s):
    T, E = logits.shape
    G, TG, K = s["groups"], s["topkGroups"], s["k"]
    scores = logits.sigmoid()
    biased = scores + bias.unsqueeze(0)
    group_scores = biased.view(T, G, -1).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = group_scores.topk(TG, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    expert_mask = group_mask.unsqueeze(-1).expand(T, G, E // G).reshape(T, -1)
    ids = biased.masked_fill(expert_mask == 0, float("-inf")).topk(K, dim=-1)[1]
    w = scores.gather(1, ids)
    return ids, w / (w.sum(dim=-1, keepdim=True) + 1e-20) * s["scale"]


def swiglu(h):
    i = h.shape[-1] // 2
    return torch.nn.functional.silu(h[..., :i]) * h[..., i:]


def grouped_mm(a, w, offs):
    return torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)


def loop_mm(a, w, counts):
    outs, start = [], 0
    for e, c in enumerate(counts.tolist()):
        if c:
            outs.append(a[start:start + c] @ w[e].t())
        start += c
    return torch.cat(outs) if outs else a.new_zeros(0, w.shape[1])


def block(x, router, bias, wt, s, use_grouped):
    T, K, E = x.shape[0], s["k"], s["experts"]
    ids, gate = route(x.float() @ router.float().t(), bias, s)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    # scatter_add_ rather than bincount, which reads its maximum back to the host (no capture)
    counts = torch.zeros(E, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
    token = order // K
    xs = x[token]
    if use_grouped:
        offs = torch.cumsum(counts, 0).to(torch.int32)
        y = grouped_mm(swiglu(grouped_mm(xs, wt["w13"], offs)), wt["w2"], offs)
    else:
        y = loop_mm(swiglu(loop_mm(xs, wt["w13"], counts)), wt["w2"], counts)
    routed = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
    routed.index_add_(0, token, y.float() * gate.flatten()[order].unsqueeze(1))
    shared = swiglu(x @ wt["sw13"].t()) @ wt["sw2"].t()
    return (routed + shared.float()).to(torch.bfloat16), ids


def grouped_works(s):
    """torch._grouped_mm on this build and GPU, checked against the loop on a small case."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        gen = harness.generator(7)
        E, H, N = 4, 64, 32
        counts = torch.tensor([3, 0, 5, 1], device="cuda")
        a = torch.randn(int(counts.sum()), H, device="cuda", generator=gen).to(torch.bfloat16)
        w = torch.randn(E, N, H, device="cuda", generator=gen).to(torch.bfloat16)
        got = grouped_mm(a, w, torch.cumsum(counts, 0).to(torch.int32))
        return bool(torch.allclose(got.float(), loop_mm(a, w, counts).float(), rtol=2e-2, atol=2e-2))
    except Exception:  # noqa: BLE001 - any failure means: use the loop
        return False


def time_block(fn, stream):
    timing = "cuda-graph"
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
        replay = graph.replay
    except Exception as e:  # noqa: BLE001 - capture can refuse an op (the loop syncs); time eagerly
        timing = f"eager ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        torch.cuda.synchronize()
        replay = fn
    return harness.median(harness.time_replays(replay, stream, TRIALS, replays=REPLAYS, warmup=WARMUP)), timing


def main():
    global torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True, help="folder written by benchmarks/moe.js")
    ap.add_argument("--out", help="JSON file to write (default BUNDLE/peer.json)")
    args = ap.parse_args()
    torch = harness.require_cuda()
    with open(os.path.join(args.bundle, "manifest.json")) as f:
        manifest = json.load(f)
    s = manifest["settings"]
    dev = torch.cuda.get_device_name(0)
    print(f"PyTorch {torch.__version__} on {dev}", flush=True)
    router, bias = load(args.bundle, manifest, "router"), load(args.bundle, manifest, "bias")
    original, deq = weights(args.bundle, manifest, s)
    use_grouped = grouped_works(s)
    stream = torch.cuda.Stream()
    cases, outputs = [], {}
    for T in s["tokens"]:
        x = load(args.bundle, {"tensors": manifest["inputs"][str(T)]}, "x")
        ms, timing = time_block(lambda: block(x, router, bias, original, s, use_grouped), stream)
        cases.append({"T": T, "ms": ms, "timing": timing})
        print(f"  T={T}: {ms * 1e3:.1f} us ({timing})", flush=True)
        out_o, ids = block(x, router, bias, original, s, use_grouped)
        out_d, _ = block(x, router, bias, deq, s, use_grouped)
        files = {"original": f"bf16_original_{T}.bin", "dequantized": f"bf16_dequantized_{T}.bin", "ids": f"bf16_ids_{T}.bin"}
        for key, t in [("original", out_o), ("dequantized", out_d), ("ids", ids.to(torch.int32))]:
            with open(os.path.join(args.bundle, files[key]), "wb") as f:
                f.write(t.contiguous().cpu().view(torch.uint8).numpy().tobytes())
        outputs[str(T)] = files
    timings = sorted({c["timing"].split(" ")[0] for c in cases})
    result = {
        "benchmark": "moe-pytorch",
        **harness.header(dev),
        "timing": "timed as " + " / ".join(timings),
        "grouped": "torch._grouped_mm" if use_grouped else "a loop over experts (torch._grouped_mm unavailable)",
        "cases": cases,
        "outputs": outputs,
    }
    harness.write_json(args.out or os.path.join(args.bundle, "peer.json"), result)


if __name__ == "__main__":
    harness.run(main)
