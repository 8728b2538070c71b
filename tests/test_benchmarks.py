"""The benchmark scripts' `--smoke` runs, so that CI keeps them working (their numbers on
this CPU box mean nothing; the structure of what they report does)."""
import json
import math

import pytest

from benchmarks import rank_oe, reader, throughput


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_reader_smoke(tmp_path):
    rows = reader.main(["--smoke", "--json", str(tmp_path / "reader.json")])
    assert rows and all(finite_positive(r["img_per_s"]) for r in rows)
    assert json.loads((tmp_path / "reader.json").read_text())


@pytest.mark.slow
def test_rank_oe_smoke(ray_local, tmp_path):
    result = rank_oe.main(["--smoke", "--json", str(tmp_path / "rank.json")])
    saved = json.loads((tmp_path / "rank.json").read_text())
    assert saved.keys() == result.keys()
    assert ray_local.is_initialized()  # the session's Ray is left running


@pytest.mark.slow
def test_throughput_smoke(ray_local, tmp_path):
    """Every part (a, b, c, each (d) variant, e) runs and reports a rate, (c) runs the
    fastest (d) arrangement, the profile is written; the target is not judged on a CPU."""
    report = throughput.main(["--smoke", "--json", str(tmp_path / "t.json"), "--profile-dir", str(tmp_path / "prof")])
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    for key, rate in report["summary"]["img_per_s"].items():
        assert finite_positive(rate), (key, rate)
    for key in ("a_synthetic", "b_ray_cpu_decode", "c_ray_gpu_decode"):
        assert "error" not in report["results"][key], report["results"][key]
    assert report["summary"]["ratio_to_a_compiled"]["a_compiled"] == pytest.approx(1.0)
    assert report["summary"]["target"]["met"] is None
    d_runs = report["results"]["a_synthetic"]["in_process"]
    assert set(d_runs) == set(throughput.variants(throughput.parse(["--smoke"]).d_variants))
    best = report["summary"]["best_d_variant"]
    assert d_runs[best]["img_per_s"] == max(r["img_per_s"] for r in d_runs.values())
    assert report["results"]["c_ray_gpu_decode"]["variant"] == best
    assert (tmp_path / "prof" / "trace_d.json.gz").stat().st_size > 1000
    assert "Self CPU" in (tmp_path / "prof" / "profile_d.txt").read_text()
    epochs = report["results"]["c_ray_gpu_decode"]["epochs"]
    assert epochs and all(e["data_wait_s"] is not None and e["data_wait_s"] >= 0 for e in epochs)
    assert ray_local.is_initialized()
