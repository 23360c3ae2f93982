#!/usr/bin/env python3
"""PyTorch peer of benchmarks/mtp.js: MTP draft verification written the way vLLM's rejection
sampler does it, vectorized over the batch, on the same shapes and cases.

  greedy:    argmax of every row, compare with the drafts, cumprod -> accepted prefix, then the
             argmax at the first mismatch (or of the bonus row).
  rejection: temperature, optional top-k / top-p (sort-based, as vLLM's apply_top_k_top_p),
             softmax; accept where u * q(x) < p(x) (q = 1 without draft probs); the recovered
             token of every position from max(0, p - q) (p without the draft for one-hot
             drafts) and the bonus token from p, both with torch.multinomial; then pick per
             request.

Each case is timed with CUDA events over back-to-back calls (warm-up, median of repeated
measurements), inside a CUDA graph where capture works, else eagerly; the JSON says which.
Also measures a device-to-device copy (bytes read + written). Timing, the copy, the seeded
generators and the JSON header come from peers/harness.py.

  python3 benchmarks/peers/mtp.py [--out FILE] [--seed 1]

--out defaults to benchmarks/results/mtp-pytorch-<card>.json. Without PyTorch or a CUDA GPU it
exits with status 3.
"""
import argparse
import os

import harness

torch = None  # bound by main() once harness.require_cuda() has found PyTorch and a GPU

N_DRAFTS = 3
VOCAB = 129280
TEMPERATURE = 0.7
TOP_K = 50
TOP_P = 0.9
WARMUP = 10
INNER = 20
REPS = 30
CASES = [
    ("greedy", "greedy", False, False),
    ("rejection", "rejection", False, False),
    ("rejection + draft probs", "rejection", True, False),
    ("rejection + top-k/top-p", "rejection", False, True),
    ("rejection + draft probs + top-k/top-p", "rejection", True, True),
]
BATCHES = [256, 1]


def apply_top_k_top_p(logits, k, p):
    """vLLM's sort-based filter: logits [R, V] f32, k and p [R]; masked entries become -inf."""
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    top_k_mask = logits_sort.size(1) - k.to(torch.long)
    top_k_threshold = logits_sort.gather(1, top_k_mask.unsqueeze(dim=1))
    logits_sort.masked_fill_(logits_sort < top_k_threshold, -float("inf"))
    probs_sort = logits_sort.softmax(dim=-1)
    probs_sum = probs_sort.cumsum(dim=-1)
    top_p_mask = probs_sum <= 1 - p.unsqueeze(dim=1)
    top_p_mask[:, -1] = False
    logits_sort.masked_fill_(top_p_mask, -float("inf"))
    return logits_sort.scatter(dim=-1, index=logits_idx, src=logits_sort)


def emit(drafts, accepted, last_tokens):
    """tokens [B, n+1]: drafts before `accepted`, last_tokens[b] at it, -1 after."""
    B, n = drafts.shape
    pos = torch.arange(n + 1, device=drafts.device).unsqueeze(0)
    padded = torch.cat([drafts, torch.full((B, 1), -1, dtype=drafts.dtype, device=drafts.device)], dim=1)
    acc = accepted.unsqueeze(1)
    out = torch.where(pos < acc, padded, torch.full_like(padded, -1))
    return torch.where(pos == acc, last_tokens.unsqueeze(1), out)


def greedy(target, drafts):
    n = drafts.shape[1]
    argmax = target.argmax(dim=-1).to(torch.int32)  # [B, n+1]
    match = (argmax[:, :n] == drafts).to(torch.int32)
    accepted = match.cumprod(dim=1).sum(dim=1)  # [B]
    last = argmax.gather(1, accepted.unsqueeze(1).to(torch.long)).squeeze(1)
    return emit(drafts, accepted, last), accepted + 1


def rejection(target, drafts, draft_probs, temperature, top_k, top_p):
    B, rows, V = target.shape
    n = rows - 1
    logits = target.float().view(B * rows, V) / temperature.repeat_interleave(rows).unsqueeze(1)
    if top_k is not None:
        logits = apply_top_k_top_p(logits, top_k.repeat_interleave(rows), top_p.repeat_interleave(rows))
    p = logits.softmax(dim=-1).view(B, rows, V)
    d = drafts.to(torch.long).unsqueeze(-1)
    p_draft = p[:, :n].gather(-1, d).squeeze(-1)
    if draft_probs is not None:
        q_draft = draft_probs.gather(-1, d).squeeze(-1)
        residual = (p[:, :n] - draft_probs).clamp_(min=0)
    else:
        q_draft = torch.ones_like(p_draft)
        residual = p[:, :n].scatter(-1, d, 0.0)
    u = torch.rand(B, n, device=target.device)
    accept = (u * q_draft < p_draft).to(torch.int32)
    accepted = accept.cumprod(dim=1).sum(dim=1)
    # rows whose residual is all zero (rounding) fall back to p, so multinomial never sees a zero row
    empty_rows = residual.sum(dim=-1, keepdim=True) <= 0
    residual = torch.where(empty_rows, p[:, :n], residual)
    recovered = torch.multinomial(residual.view(B * n, V), 1).view(B, n)
    bonus = torch.multinomial(p[:, n], 1)
    candidates = torch.cat([recovered, bonus], dim=1).to(torch.int32)
    last = candidates.gather(1, accepted.unsqueeze(1).to(torch.long)).squeeze(1)
    return emit(drafts, accepted, last), accepted + 1


def time_fn(fn, stream):
    return harness.median(harness.time_replays(fn, stream, REPS, replays=INNER, warmup=WARMUP))


def run_batch(B, seed):
    n, V = N_DRAFTS, VOCAB
    gen = harness.generator(seed * 4096 + B)
    target = (torch.randn(B, n + 1, V, device="cuda", generator=gen) * 2).to(torch.bfloat16)
    argmax = target[:, :n].argmax(dim=-1).to(torch.int32)
    other = torch.randint(0, V, (B, n), device="cuda", generator=gen, dtype=torch.int32)
    use_argmax = torch.rand(B, n, device="cuda", generator=gen) < 0.6
    drafts = torch.where(use_argmax, argmax, other)
    draft_probs = torch.randn(B, n, V, device="cuda", generator=gen).exp_()
    draft_probs /= draft_probs.sum(dim=-1, keepdim=True)
    temperature = torch.full((B,), TEMPERATURE, device="cuda")
    top_k = torch.full((B,), TOP_K, device="cuda", dtype=torch.int32)
    top_p = torch.full((B,), TOP_P, device="cuda")
    rows = []
    stream = torch.cuda.Stream()
    for name, mode, probs, filt in CASES:
        if mode == "greedy":
            fn = lambda: greedy(target, drafts)  # noqa: E731
        else:
            fn = lambda probs=probs, filt=filt: rejection(  # noqa: E731
                target, drafts, draft_probs if probs else None, temperature, top_k if filt else None, top_p if filt else None
            )
        timing = "cuda-graph"
        try:
            with torch.cuda.stream(stream):
                for _ in range(3):
                    fn()  # warm-up before capture (allocator, lazy init)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                fn()
            ms = time_fn(graph.replay, stream)
        except Exception as e:  # capture can refuse an op; time eagerly then
            timing = f"eager ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            torch.cuda.synchronize()
            ms = time_fn(fn, stream)
        rows.append({"case": name, "B": B, "n": n, "V": V, "ms": ms, "timing": timing})
        print(f"  {name}, B={B}: {ms * 1e3:.1f} us ({timing})", flush=True)
    return rows


def main():
    global torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="JSON file to write (default benchmarks/results/mtp-pytorch-<card>.json)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch = harness.require_cuda()
    harness.seed_all(args.seed)
    dev = torch.cuda.get_device_name(0)
    print(f"PyTorch {torch.__version__} on {dev}", flush=True)
    copy = harness.copy_bandwidth()
    cases = []
    for B in BATCHES:
        cases += run_batch(B, args.seed)
    timings = sorted({c["timing"].split(" ")[0] for c in cases})
    result = {
        "benchmark": "mtp-pytorch",
        **harness.header(dev),
        "timing": "timed as " + " / ".join(timings),
        "seed": args.seed,
        "copy": copy,
        "cases": cases,
    }
    harness.write_json(args.out or os.path.join(harness.RESULTS_DIR, f"mtp-pytorch-{result['card']}.json"), result)


if __name__ == "__main__":
    harness.run(main)
