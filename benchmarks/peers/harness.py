"""What the PyTorch peers share, measured and written the way benchmarks/harness.js does it for
our side: CUDA-graph timing with torch.cuda.CUDAGraph and torch.cuda.Event, the rotation over
weight sets larger than L2, the bandwidth of a 1 GiB device-to-device copy, card naming, seeded
torch generators, and JSON results with the same header fields (card, driver, date, package).

torch is imported on first use, so the pure helpers work without it. A peer run without torch
or without a CUDA GPU exits with status 3 (EXIT_NO_GPU), as the JS benchmarks do; any other
failure prints one line, `error: <type>: <message>`, and exits 1.
"""
import datetime
import json
import math
import os
import re
import subprocess
import sys

EXIT_NO_GPU = 3
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


# ---- torch, the no-GPU exit and errors -----------------------------------------------------


def program():
    return os.path.relpath(os.path.abspath(sys.argv[0]), ROOT) if sys.argv and sys.argv[0] else "peer"


def require_cuda():
    """torch, once it is known to see a CUDA GPU; else a message and exit EXIT_NO_GPU."""
    try:
        import torch
    except ImportError:
        print(f"{program()}: needs PyTorch with CUDA (no torch module in {sys.executable}); nothing was measured.", file=sys.stderr)
        sys.exit(EXIT_NO_GPU)
    if not torch.cuda.is_available():
        print(f"{program()}: needs a CUDA GPU (PyTorch {torch.__version__} sees none); nothing was measured.", file=sys.stderr)
        sys.exit(EXIT_NO_GPU)
    return torch


def run(main):
    """Runs a peer's main: every failure as one line, no traceback."""
    try:
        main()
    except Exception as e:  # noqa: BLE001 - one line per failure is the point
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {first}", file=sys.stderr)
        sys.exit(1)


# ---- statistics ----------------------------------------------------------------------------


def percentile(xs, p):
    """The p-th percentile (0..100) by linear interpolation between order statistics."""
    if not xs:
        raise ValueError("percentile of no samples")
    s = sorted(xs)
    r = min(100.0, max(0.0, p)) / 100.0 * (len(s) - 1)
    lo, hi = math.floor(r), math.ceil(r)
    return s[lo] + (s[hi] - s[lo]) * (r - lo)


def median(xs):
    """The middle sample, or the mean of the two middle ones."""
    return percentile(xs, 50)


# ---- random numbers ------------------------------------------------------------------------


def generator(seed, device="cuda"):
    """A torch generator of its own for a benchmark's data, so its draws do not depend on what
    else ran before."""
    torch = require_cuda()
    return torch.Generator(device=device).manual_seed(seed)


def seed_all(seed):
    """Seeds the default generators, which the ops being timed draw from (e.g. multinomial)."""
    require_cuda().manual_seed(seed)


# ---- timing on the GPU ---------------------------------------------------------------------


def time_replays(replay, stream, trials, replays=1, warmup=1):
    """Milliseconds per call of replay() (a graph's replay, or an eager function) on `stream`:
    `warmup` calls, then `trials` samples of `replays` back-to-back calls between a pair of
    timing events."""
    torch = require_cuda()
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            replay()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(trials):
        with torch.cuda.stream(stream):
            start.record()
            for _ in range(replays):
                replay()
            end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / replays)
    return samples


def time_launches(fn, launches, trials, stream):
    """Milliseconds per call, one sample per trial, of `launches` calls fn(i) captured back to
    back in one CUDA graph, so host overhead never leaves the GPU idle inside the timed region."""
    torch = require_cuda()
    # warm-up outside capture: cuBLAS picks algorithms and allocates its workspace here
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(launches):
            fn(i)
    samples = time_replays(graph.replay, stream, trials)
    del graph
    return [s / launches for s in samples]


def launches_for(per_launch_ms, step=1, replay_ms=3.0, max_launches=200):
    """R, the calls in one graph: about `replay_ms` per replay, a multiple of `step` (the
    rotation length) where `max_launches` allows, at least one step."""
    return max(step, min(max_launches, math.ceil(replay_ms / per_launch_ms / step) * step))


def time_launches_auto(fn, step, trials, stream, replay_ms=3.0, max_launches=200):
    """time_launches with R from launches_for on a first estimate: (R, samples)."""
    estimate = median(time_launches(fn, step, 3, stream))
    launches = launches_for(estimate, step, replay_ms, max_launches)
    return launches, time_launches(fn, launches, trials, stream)


def time_copies(dst, src, copies=5, trials=10, warmup=3):
    """Milliseconds of one dst.copy_(src): `copies` back-to-back copies between a pair of events on
    the current device's stream (where a copy between devices runs when src's device is
    current), median over `trials`."""
    torch = require_cuda()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    for _ in range(warmup):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        start.record()
        for _ in range(copies):
            dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / copies)
    return median(times)


def copy_bandwidth(nbytes=1 << 30, copies=5, trials=10, warmup=3):
    """Device-to-device copy of `nbytes` (time_copies), counted as bytes read plus written (the
    traffic a kernel that reads its operands once competes with)."""
    torch = require_cuda()
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_copies(dst, src, copies, trials, warmup)
    del src, dst
    per_s = 2 * nbytes / (ms * 1e-3)
    return {"bytes": nbytes, "ms": ms, "tbs": per_s / 1e12, "gbPerS": per_s / 1e9}


# ---- weight sets larger than L2 ------------------------------------------------------------


def l2_bytes(props):
    """The L2 size from torch.cuda.get_device_properties; 50 MiB where it is not reported."""
    return getattr(props, "L2_cache_size", 0) or 50 << 20


def rotation_sets(set_bytes, l2, factor=4, min_sets=3, max_sets=32):
    """S, the weight sets a timed loop rotates over: at least `min_sets`, and enough that
    S x set_bytes >= factor x L2, capped at `max_sets` to bound memory."""
    if not set_bytes > 0:
        raise ValueError(f"rotation_sets: set_bytes must be positive, got {set_bytes}")
    return min(max_sets, max(min_sets, math.ceil(factor * l2 / set_bytes)))


# ---- naming and the result header ----------------------------------------------------------


def card_name(name):
    """A card's name as result file names carry it: "NVIDIA H200" -> "NVIDIA-H200"."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


_driver = []


def driver_version():
    """The NVIDIA driver version, or None where it cannot be read."""
    if not _driver:
        version = None
        try:
            with open("/proc/driver/nvidia/version") as f:
                m = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", f.read())
                version = m.group(1) if m else None
        except OSError:
            pass
        if version is None:
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=10).stdout
                lines = out.strip().splitlines()
                version = lines[0].strip() if lines else None
            except (OSError, subprocess.SubprocessError):
                pass
        _driver.append(version)
    return _driver[0]


def package_version():
    with open(os.path.join(ROOT, "package.json")) as f:
        return json.load(f)["version"]


def now():
    """The date as the JS side writes it: ISO 8601, UTC, milliseconds, Z."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def header(device_name):
    """The fields every result file starts with, plus the peer's PyTorch and CUDA versions."""
    torch = require_cuda()
    return {
        "device": device_name,
        "card": card_name(device_name),
        "driver": driver_version(),
        "date": now(),
        "package": package_version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def write_json(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
