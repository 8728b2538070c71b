"""Summarise a torch.profiler Chrome trace of training steps (`throughput.py --profile-dir`).

    python benchmarks/trace_summary.py trace_d.json.gz [--json summary.json]

Answers, from the trace alone, where a GPU-fed training loop loses time:
  - per CUDA stream: kernels, copies and their busy time (overlapping events counted once);
  - the training stream (the busiest): its idle gaps, i.e. time it waited for input or for
    the host to queue work, and how much of its busy time other streams ran beside it;
  - the other streams' largest kernels (the input stage's GPU work);
  - per host thread: time inside CPU ops and time blocked in CUDA synchronisation calls.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize",
              "cuStreamSynchronize", "cuEventSynchronize", "cuCtxSynchronize")


def load(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: not a readable Chrome trace ({err})") from None
    events = data.get("traceEvents", data) if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise SystemExit(f"{path}: no traceEvents list in it")
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge [start, end) intervals into disjoint ones, in order."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def length(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def intersect(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the overlap of two disjoint, sorted interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def summarise(events: list[dict], gap_min_us: float = 20.0) -> dict:
    """The numbers the module docstring lists; times in milliseconds."""
    streams: dict[str, list[tuple[float, float]]] = defaultdict(list)
    names: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    threads: dict[str, list[tuple[float, float]]] = defaultdict(list)
    blocked: dict[str, float] = defaultdict(float)
    for e in events:
        start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        cat = e.get("cat", "")
        if cat in GPU_CATEGORIES:
            stream = str(e.get("args", {}).get("stream", e.get("tid", "?")))
            streams[stream].append((start, end))
            names[stream][e.get("name", "?")] += end - start
        elif cat == "cpu_op":
            threads[str(e.get("tid", "?"))].append((start, end))
        elif cat in ("cuda_runtime", "cuda_driver") and e.get("name", "").startswith(SYNC_CALLS):
            blocked[str(e.get("tid", "?"))] += end - start
    if not streams:
        return {"streams": {}, "training_stream": None, "threads": _threads(threads, blocked)}
    merged = {s: union(iv) for s, iv in streams.items()}
    train = max(merged, key=lambda s: length(merged[s]))
    busy = merged[train]
    window = (busy[0][0], busy[-1][1])
    gaps = [(busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1)]
    big = [g for g in gaps if g[1] - g[0] >= gap_min_us]
    others = union([iv for s, ivs in merged.items() if s != train for iv in ivs])
    span = window[1] - window[0]
    out = {
        "window_ms": span / 1e3,
        "training_stream": train,
        "training_busy_ms": length(busy) / 1e3,
        "training_busy_fraction": length(busy) / span if span > 0 else None,
        "training_gaps": {"count": len(big), "total_ms": sum(b - a for a, b in big) / 1e3,
                          "longest_ms": max((b - a for a, b in big), default=0.0) / 1e3,
                          "min_gap_us": gap_min_us},
        "other_streams_beside_training_ms": intersect(busy, others) / 1e3,
        "streams": {s: {"events": len(streams[s]), "busy_ms": length(merged[s]) / 1e3,
                        "top": sorted(((n, t / 1e3) for n, t in names[s].items()), key=lambda x: -x[1])[:8]}
                    for s in sorted(merged, key=lambda s: -length(merged[s]))},
        "threads": _threads(threads, blocked),
    }
    return out


def _threads(threads: dict, blocked: dict) -> dict:
    tids = set(threads) | set(blocked)
    return {t: {"cpu_ops_ms": length(union(threads.get(t, []))) / 1e3, "sync_blocked_ms": blocked.get(t, 0.0) / 1e3}
            for t in sorted(tids, key=lambda t: -length(union(threads.get(t, []))))}


def report(s: dict) -> str:
    lines = []
    if s.get("training_stream") is None:
        lines.append("no GPU events in the trace (a CPU-only profile)")
    else:
        lines += [f"window {s['window_ms']:.1f} ms; training stream {s['training_stream']}: busy "
                  f"{s['training_busy_ms']:.1f} ms ({100 * s['training_busy_fraction']:.1f}%), "
                  f"{s['training_gaps']['count']} gaps >= {s['training_gaps']['min_gap_us']:.0f} us totalling "
                  f"{s['training_gaps']['total_ms']:.1f} ms (longest {s['training_gaps']['longest_ms']:.2f} ms); "
                  f"other streams ran beside it for {s['other_streams_beside_training_ms']:.1f} ms", "",
                  "| stream | events | busy ms | largest kernels (ms) |", "|---|---:|---:|---|"]
        for stream, v in s["streams"].items():
            top = "; ".join(f"{n[:60]} {t:.2f}" for n, t in v["top"][:3])
            lines.append(f"| {stream} | {v['events']} | {v['busy_ms']:.1f} | {top} |")
    lines += ["", "| host thread | in CPU ops ms | blocked in CUDA syncs ms |", "|---|---:|---:|"]
    for tid, v in list(s["threads"].items())[:8]:
        lines.append(f"| {tid} | {v['cpu_ops_ms']:.1f} | {v['sync_blocked_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="a Chrome trace (.json or .json.gz) from torch.profiler")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--gap-us", type=float, default=20.0, help="training-stream idle gaps shorter than this are ignored")
    args = p.parse_args(argv)
    summary = summarise(load(args.trace), gap_min_us=args.gap_us)
    print(report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
