"""The benchmark scripts' `--smoke` runs, so that CI keeps them working (their numbers on
this CPU box mean nothing; the structure of what they report does)."""
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import backbones, predict, rank_oe, reader, throughput


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_reader_smoke(tmp_path):
    rows = reader.main(["--smoke", "--stores", "local", "s3", "--json", str(tmp_path / "reader.json")])
    assert rows and all(finite_positive(r["img_per_s"]) for r in rows)
    assert {r["store"] for r in rows} == {"local", "s3"}
    assert all(finite_positive(r["cpu_vs_local"]) for r in rows if r["arrangement"] == "project")
    # the plain webdataset baseline beside it (local files), and the project's ratio to it
    base = {r["workers"]: r for r in rows if r["arrangement"] == "baseline"}
    assert set(base) == {1, 2} and all(r["store"] == "local" and finite_positive(r["cpu_ms_per_img"])
                                       for r in base.values())
    for r in rows:  # each row against the baseline with as many workers
        want = r["cpu_ms_per_img"] / base[r["workers"]]["cpu_ms_per_img"]
        assert r["cpu_vs_baseline"] == pytest.approx(want, abs=1e-3)
    saved = json.loads((tmp_path / "reader.json").read_text())
    assert all("cpu_ms_per_img" in r and r["image_size"] == 32 for r in saved["results"])


def test_backbones_smoke(tiny_shards, tmp_path):
    """benchmarks/backbones.py: each model's epochs on the tiny config, their CPU time, D."""
    out = backbones.main(["--smoke", "--data", str(tiny_shards), "--json", str(tmp_path / "b.json")])
    (row,) = out["results"]
    assert row["model"] == "smallcnn" and row["feature_dim"] == 128 and row["steps_per_epoch"] == 2
    assert [e["steps"] for e in row["epochs"]] == [2, 2] and all(math.isfinite(e["loss"]) for e in row["epochs"])
    assert finite_positive(row["cpu_s_per_epoch"]) and row["cpu_s_per_epoch"] == row["epochs"][1]["cpu_s"]
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["model"] == "smallcnn"


@pytest.mark.slow
def test_rank_oe_smoke(ray_local, tmp_path):
    result = rank_oe.main(["--smoke", "--json", str(tmp_path / "rank.json")])
    saved = json.loads((tmp_path / "rank.json").read_text())
    assert saved.keys() == result.keys()
    assert ray_local.is_initialized()  # the session's Ray is left running


@pytest.mark.slow
def test_predict_smoke(ray_local, tmp_path):
    """predict decoding in tasks and in the actor, and eval on the same images: rates, and the
    same scores."""
    result = predict.main(["--smoke", "--json", str(tmp_path / "predict.json")])
    rows = {r["run"]: r for r in result["rows"]}
    runs = ("predict, 1 actor, decode in tasks", "predict, 1 actor, decode in actor")
    assert set(rows) == {*runs, "eval, 1 torch thread"}
    for r in rows.values():
        assert r["images"] == 96 and finite_positive(r["img_per_s"]) and finite_positive(r["seconds"])
        assert r["kind"] == "32png"
    for name in runs:
        assert rows[name]["max_rel_diff_vs_eval"] < 1e-5 and 0 < rows[name]["first_row_s"] <= rows[name]["seconds"]
    assert json.loads((tmp_path / "predict.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert ray_local.is_initialized()


@pytest.mark.slow
def test_floor_smoke(tmp_path):
    """The step as floor, engine and reader (6 steps of the demo's model): every layer timed, the
    ratios against the floor, the reader's own step count."""
    from benchmarks import floor

    assert floor.main(["--smoke", "--json", str(tmp_path / "floor.json")]) == 0
    result = json.loads((tmp_path / "floor.json").read_text())["layers"]
    assert {r["layer"] for r in result["rows"]} == {"floor", "engine", "reader"}
    assert all(r["steps"] == 6 and finite_positive(r["cpu_ms_per_step"]) for r in result["rows"])
    assert result["summary"]["floor"]["x_floor"] == 1.0
    assert all(finite_positive(v["x_floor"]) for v in result["summary"].values())


@pytest.mark.slow
def test_throughput_smoke(ray_local, tmp_path):
    """Parts a, c, each (d) variant, e and f run and report a rate, (c) runs the fastest (d)
    arrangement, the profile is written; the target is not judged on a CPU. ((b) runs in
    the acceptance script's test below.)"""
    report = throughput.main(["--smoke", "--parts", "f,a,d,c", "--json", str(tmp_path / "t.json"),
                              "--profile-dir", str(tmp_path / "prof"), "--compile-modes", "default,reduce-overhead"])
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    for key, rate in report["summary"]["img_per_s"].items():
        assert finite_positive(rate), (key, rate)
    for key in ("a_synthetic", "c_ray_gpu_decode"):
        assert "error" not in report["results"][key], report["results"][key]
    assert report["summary"]["target"]["met"] is None
    assert finite_positive(report["summary"]["img_per_s"]["a_compiled_reduce-overhead"])
    d_runs = report["results"]["a_synthetic"]["in_process"]
    first = throughput.variants(throughput.parse(["--smoke"]).d_variants)
    best_first = max(first, key=lambda v: d_runs[v]["img_per_s"])  # run again in the second mode
    assert set(d_runs) == set(first) | {f"reduce-overhead:{best_first}"}
    assert report["results"]["a_synthetic"]["profile"]["variant"] == best_first
    best = report["summary"]["best_d_variant"]
    assert d_runs[best]["img_per_s"] == max(r["img_per_s"] for r in d_runs.values())
    # (c) repeats the fastest (d) that left pinning to the loader, as the Ray worker does
    c_variant = report["results"]["c_ray_gpu_decode"]["variant"]
    assert "pin=" not in c_variant and any("pin=" in v for v in d_runs)
    assert d_runs[c_variant]["img_per_s"] == max(r["img_per_s"] for v, r in d_runs.items() if "pin=" not in v)
    assert report["summary"]["ratio_to_a_compiled"][max(
        ("a_compiled", "a_compiled_reduce-overhead"), key=report["summary"]["img_per_s"].get)] == pytest.approx(1.0)
    # (f): CPU ms per image of both arrangements, and the feed predicted from it
    f = report["results"]["f_cpu_input"]
    for arrangement in ("project", "baseline"):
        ms = f[arrangement]["cpu_ms_per_img"]
        assert finite_positive(ms)
        assert f[arrangement]["predicted_feed_img_s"] == pytest.approx(f["node_workers"] * 1000 / ms, rel=1e-3)
    assert f["cpu_vs_baseline"] == pytest.approx(f["project"]["cpu_ms_per_img"] / f["baseline"]["cpu_ms_per_img"],
                                                 rel=1e-2)
    assert "loader workers x 1000" in report["summary"]["feed_verdict"]
    assert (tmp_path / "prof" / "trace_d.json.gz").stat().st_size > 1000
    assert "Self CPU" in (tmp_path / "prof" / "profile_d.txt").read_text()
    epochs = report["results"]["c_ray_gpu_decode"]["epochs"]
    assert epochs and all(e["data_wait_s"] is not None and e["data_wait_s"] >= 0 for e in epochs)
    assert ray_local.is_initialized()


@pytest.mark.slow
def test_device_acceptance_script_dry_run(tmp_path):
    """benchmarks/device_run.sh --smoke: the GPU acceptance run's whole flow, tiny, on the CPU:
    (a) compiled step, (c) Ray Train + GPU decode (the CPU fallback here), (b) Ray Train + CPU
    decode, (f) the predicted feed, each with its ratio to (a), in one JSON and one table."""
    from tests.conftest import ROOT

    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(["bash", "benchmarks/device_run.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "acceptance.json").read_text())
    rates, ratios = report["summary"]["img_per_s"], report["summary"]["ratio_to_a_compiled"]
    for key in ("a_compiled", "b_ray_cpu_decode", "c_ray_gpu_decode", "f_cpu_input"):
        assert finite_positive(rates[key]) and ratios[key] == pytest.approx(rates[key] / rates["a_compiled"]), key
    assert report["results"]["f_cpu_input"]["project"]["predicted_feed_img_s"] == rates["f_cpu_input"]
    table = (tmp_path / "acceptance.txt").read_text()
    assert "| (c) Ray Train worker, GPU decode, serial/batched |" in table and "× (a) compiled" in table
    assert "device_run.sh finished" in run.stdout and (tmp_path / "env.txt").is_file()


def test_trace_summary_against_a_brute_force_timeline(tmp_path):
    """Busy time, idle gaps and overlap of random kernels on two streams, against a
    1-microsecond grid; host-thread sync time summed per thread."""
    import gzip

    import numpy as np

    from benchmarks import trace_summary

    rng = np.random.default_rng(3)
    events, grid = [], {7: np.zeros(20000, bool), 13: np.zeros(20000, bool)}
    for stream, n, longest in ((7, 120, 200), (13, 40, 60)):
        for _ in range(n):
            ts, dur = int(rng.integers(0, 19000)), int(rng.integers(1, longest))
            events.append({"ph": "X", "cat": "kernel", "name": f"k{stream}", "ts": ts, "dur": dur,
                           "args": {"stream": stream}})
            grid[stream][ts:ts + dur] = True
    events += [{"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 5, "dur": 40, "tid": 2},
               {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 50, "dur": 9, "tid": 2},
               {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 30, "tid": 1},
               {"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 10, "dur": 30, "tid": 1}]
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = trace_summary.main([str(path), "--gap-us", "0", "--json", str(tmp_path / "s.json")])

    train = grid[7] if grid[7].sum() >= grid[13].sum() else grid[13]
    other = grid[13] if train is grid[7] else grid[7]
    on = np.flatnonzero(train)
    window = train[on[0]:on[-1] + 1]
    edges = np.diff(window.astype(int))
    assert s["training_busy_ms"] * 1e3 == pytest.approx(train.sum())
    assert s["window_ms"] * 1e3 == pytest.approx(len(window))
    assert s["training_gaps"]["count"] == (edges == 1).sum()  # one gap before each restart
    assert s["training_gaps"]["total_ms"] * 1e3 == pytest.approx((~window).sum())
    assert s["other_streams_beside_training_ms"] * 1e3 == pytest.approx((train & other).sum())
    assert s["threads"]["1"]["cpu_ops_ms"] * 1e3 == pytest.approx(40)
    assert s["threads"]["2"]["sync_blocked_ms"] * 1e3 == pytest.approx(40)
    assert json.loads((tmp_path / "s.json").read_text())["training_stream"] == s["training_stream"]


def test_throughput_variant_names_are_parsed_and_checked():
    from benchmarks.throughput_steps import parse_variant

    assert parse_variant("inline/batched/cpu=0.25") == {
        "mode": None, "feeder": "inline", "crops": "batched", "cpu_share": 0.25, "pin": None}
    assert parse_variant("reduce-overhead:serial/per_image") == {
        "mode": "reduce-overhead", "feeder": "serial", "crops": "per_image", "cpu_share": 0.0, "pin": None}
    assert parse_variant("serial/batched/pin=0")["pin"] is False
    assert parse_variant("inline/batched/cpu=0.4/pin=1") == {
        "mode": None, "feeder": "inline", "crops": "batched", "cpu_share": 0.4, "pin": True}
    for bad in ("serial", "fast/batched", "serial/nearest", "serial/batched/cpu=1.5", "serial/batched/0.5",
                "serial/batched/foo=1", "turbo:serial/batched", "serial/batched/x", "serial/batched/pin=2",
                "serial/batched/cpu=x", "serial/batched/pin"):
        with pytest.raises(SystemExit, match="is not"):
            parse_variant(bad)
    with pytest.raises(SystemExit, match="drop '/pin='"):
        throughput.main(["--smoke", "--c-variant", "serial/batched/pin=0"])
    with pytest.raises(SystemExit, match="listed twice"):
        throughput.main(["--smoke", "--d-variants", "serial/batched,inline/batched, serial/batched"])


def test_the_gpu_runs_variants_parse_and_hold_the_pinning_a_b():
    """The device run spends its minutes on these; a typo would cost one whole run."""
    from benchmarks.throughput_steps import parse_variant

    names = throughput.variants(throughput.D_VARIANTS)
    parsed = [parse_variant(v) for v in names]
    assert len(set(names)) == len(names)
    unpinned = [p for p in parsed if p["pin"] is False]
    assert unpinned, "no /pin=0 variant: the run would not compare against runs 1-6"
    for p in unpinned:  # each has its twin that leaves pinning to the loader
        assert dict(p, pin=None) in parsed
    assert any(p["pin"] is None for p in parsed)  # something (c) can repeat
