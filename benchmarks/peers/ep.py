#!/usr/bin/env python3
"""PyTorch peer of benchmarks/ep.js: NCCL all_to_all_single between 2 processes (one per GPU) on
the bytes of our expert-parallel dispatch and combine, and the one-way GPU0 -> GPU1 copy
bandwidth of a torch copy between the devices.

  dispatch bytes: each rank sends T rows of the payload's row bytes (bf16 2 x 7168, fp8
                  7168 + 4 x 56, nvfp4 7168/2 + 7168/16 + 4) to each rank, itself included: every
                  token to both ranks (with 128 of 256 experts per rank and top-8, a token reaches
                  the other rank with probability 0.996).
  combine bytes:  each rank sends T x 8 / 2 bf16 rows (2 x 7168 bytes) to each rank: the pairs
                  of uniform top-8 routing whose expert is there.

Cases: throughput (T = 4096: bf16, fp8, nvfp4), decode (T = 128: bf16, nvfp4). The tensors are
uint8 [2 x rows, row bytes]; all_to_all_single with equal splits. Each rank times WARMUP calls,
then TRIALS samples of INNER back-to-back calls between CUDA events on its current stream (NCCL
orders its stream after it); the case's time is the longer rank's median.

The 2 processes are started with torch.multiprocessing (spawn), rendezvous on 127.0.0.1 at a free
port (no network needed), and are bounded by a deadline; NCCL_NVLS_ENABLE=0 is set (NVLink
SHARP multicast stays off). The copy is measured in this process after they have exited.

  python3 benchmarks/peers/ep.py [--out FILE] [--timeout S]

--out defaults to benchmarks/results/ep-pytorch-<card>.json. Without PyTorch, without a CUDA GPU
or with fewer than 2 it exits with status 3.
"""
import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import time

import harness

# NVLink SHARP multicast stays off, whatever the launcher did
os.environ["NCCL_NVLS_ENABLE"] = "0"

HIDDEN = 7168
TOP_K = 8
RANKS = 2
WARMUP = 5
INNER = 10
TRIALS = 10
COPY_BYTES = 1 << 30
CASES = [
    ("throughput", "bf16", 4096),
    ("throughput", "fp8", 4096),
    ("throughput", "nvfp4", 4096),
    ("decode", "bf16", 128),
    ("decode", "nvfp4", 128),
]


def payload_bytes(payload, hidden=HIDDEN):
    """Row bytes of a payload, as native/common/ep.h defines them."""
    if payload == "fp8":
        return hidden + 4 * ((hidden + 127) // 128)
    if payload == "nvfp4":
        return hidden // 2 + hidden // 16 + 4
    return 2 * hidden


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_all_to_all(torch, dist, rows, row_bytes, device):
    """Median ms per all_to_all_single of `rows` rows of `row_bytes` to each rank."""
    gen = torch.Generator(device=device).manual_seed(1234 + rows)
    send = torch.randint(0, 256, (RANKS * rows, row_bytes), dtype=torch.uint8, device=device, generator=gen)
    recv = torch.empty_like(send)
    stream = torch.cuda.current_stream(device)
    ms = harness.median(harness.time_replays(lambda: dist.all_to_all_single(recv, send), stream, TRIALS, replays=INNER, warmup=WARMUP))
    del send, recv
    return ms


def worker(rank, out_file):
    """One rank: its GPU, the NCCL group, every case; rank 0 writes the times to out_file."""
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method="env://", rank=rank, world_size=RANKS,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # the first collective sets NCCL's connections up: outside the timing
        dist.all_to_all_single(torch.empty(RANKS * 16, device=device), torch.ones(RANKS * 16, device=device))
        torch.cuda.synchronize(device)
        mine = []
        combine_ms = {}
        for mode, payload, T in CASES:
            d = time_all_to_all(torch, dist, T, payload_bytes(payload), device)
            if T not in combine_ms:
                # the combine's bytes do not depend on the dispatch payload: measured once per T
                combine_ms[T] = time_all_to_all(torch, dist, T * TOP_K // RANKS, 2 * HIDDEN, device)
            mine.append([d, combine_ms[T]])
            if rank == 0:
                print(f"  {mode} {payload} T={T}: dispatch bytes {d * 1e3:.1f} us, combine bytes {combine_ms[T] * 1e3:.1f} us", flush=True)
        # the longer rank's time of each case
        t = torch.tensor(mine, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if rank == 0:
            cases = []
            for (mode, payload, T), (d, c) in zip(CASES, t.tolist()):
                cases.append({
                    "mode": mode, "payload": payload, "tokens": T,
                    "dispatchRowsPerRank": T, "dispatchRowBytes": payload_bytes(payload),
                    "combineRowsPerRank": T * TOP_K // RANKS, "combineRowBytes": 2 * HIDDEN,
                    "dispatchMs": d, "combineMs": c,
                })
            with open(out_file, "w") as f:
                v = torch.cuda.nccl.version()
                json.dump({"cases": cases, "nccl": ".".join(map(str, v)) if isinstance(v, tuple) else str(v)}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def peer_copy(torch, nbytes=COPY_BYTES, copies=5, trials=10, warmup=3):
    """One-way GPU0 -> GPU1 bandwidth: harness.time_copies with the source device current."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda:1")
    # a copy between devices runs on the source device's current stream: the events go there
    with torch.cuda.device(0):
        ms = harness.time_copies(dst, src, copies, trials, warmup)
    torch.cuda.synchronize(1)
    del src, dst
    return {"bytes": nbytes, "ms": ms, "gbPerS": nbytes / (ms * 1e-3) / 1e9, "method": "torch copy_ cuda:0 -> cuda:1, one-way bytes"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="JSON file to write (default benchmarks/results/ep-pytorch-<card>.json)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds the 2 processes may take together")
    args = ap.parse_args()
    torch = harness.require_cuda()
    if torch.cuda.device_count() < RANKS:
        print(f"{harness.program()}: needs {RANKS} CUDA GPUs; PyTorch sees {torch.cuda.device_count()}; nothing was measured.", file=sys.stderr)
        sys.exit(harness.EXIT_NO_GPU)
    import torch.multiprocessing as mp

    dev = torch.cuda.get_device_name(0)
    print(f"PyTorch {torch.__version__} on {dev} and {torch.cuda.get_device_name(1)}, NCCL_NVLS_ENABLE={os.environ['NCCL_NVLS_ENABLE']}", flush=True)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    fd, ranks_file = tempfile.mkstemp(prefix="ep-peer-", suffix=".json")
    os.close(fd)
    try:
        ctx = mp.spawn(worker, args=(ranks_file,), nprocs=RANKS, join=False)
        deadline = time.monotonic() + args.timeout
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.terminate()
                raise TimeoutError(f"the {RANKS} NCCL processes did not finish within {args.timeout:.0f} s")
        with open(ranks_file) as f:
            measured = json.load(f)
    finally:
        os.unlink(ranks_file)
    copy = None
    try:
        copy = peer_copy(torch)
        print(f"  one-way copy cuda:0 -> cuda:1: {copy['gbPerS']:.0f} GB/s", flush=True)
    except Exception as e:  # noqa: BLE001 - the NCCL times stand without it
        print(f"  one-way copy cuda:0 -> cuda:1 failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
    result = {
        "benchmark": "ep-pytorch",
        **harness.header(dev),
        "nccl": measured["nccl"],
        "timing": f"NCCL {measured['nccl']} all_to_all_single, 2 processes, eager, {INNER} back-to-back calls between CUDA events, "
                  f"median of {TRIALS}, the longer rank's",
        "env": {"NCCL_NVLS_ENABLE": os.environ["NCCL_NVLS_ENABLE"]},
        "copy": copy,
        "cases": measured["cases"],
    }
    harness.write_json(args.out or os.path.join(harness.RESULTS_DIR, f"ep-pytorch-{result['card']}.json"), result)


if __name__ == "__main__":
    harness.run(main)
