"""Issue 33, item 4: the per-epoch gap diagnostics of a `compare` study's EDGE runs, averaged
over seeds (edge_ray/compare/gap.py), checked against the statistics module on random
histories; and the figure/table command on two studies."""
import json
import random
import statistics

import pytest

from edge_ray.compare.gap import edge_histories, main, summarize

LOSS = {"alpha": 1.0, "beta": 0.1, "k": 8, "m": 3.0, "tau": 2, "gap": "mean"}


def _study(folder, loss, seeds=(0, 1, 2), epochs=4, rng=None, methods=("oe", "edge")):
    rng = rng or random.Random(0)
    runs, truth = [], {}
    for method in methods:
        for seed in seeds:
            run_dir = folder / "runs" / f"compare-{method}-seed{seed}"
            run_dir.mkdir(parents=True)
            history = [{"epoch": e + 1, "gap_active": rng.random(), "energy_id_bottomk": rng.uniform(2, 9),
                        "energy_oe": rng.uniform(0, 1), "beta_active": e + 1 > loss["tau"]} for e in range(epochs)]
            (run_dir / "summary.json").write_text(json.dumps({"history": history}))
            (run_dir / "results.json").write_text(json.dumps({"config": {"loss": {**loss, "method": method}}}))
            runs.append({"method": method, "seed": seed, "results": str(run_dir / "results.json")})
            if method == "edge":
                truth[seed] = history
    (folder / "results.json").write_text(json.dumps({"runs": runs}))
    return truth


def test_means_over_seeds_per_epoch(tmp_path):
    truth = _study(tmp_path, LOSS)
    runs = edge_histories(str(tmp_path))
    # records written before loss.m_mode existed read as the paper's (absolute) margin
    assert sorted(r["seed"] for r in runs) == [0, 1, 2]
    assert all(r["loss"] == {**LOSS, "m_mode": "absolute"} for r in runs)
    s = summarize(runs)
    assert s["epochs"] == [1, 2, 3, 4] and s["gap_on"] == [False, False, True, True]
    for q in ("gap_active", "energy_id_bottomk", "energy_oe"):
        for i in range(4):
            values = [truth[seed][i][q] for seed in (0, 1, 2)]
            assert s[q]["mean"][i] == pytest.approx(statistics.fmean(values))
            assert s[q]["std"][i] == pytest.approx(statistics.stdev(values))
    for i in range(4):
        assert s["active_above"]["mean"][i] == pytest.approx(
            statistics.fmean(truth[seed][i]["energy_id_bottomk"] for seed in (0, 1, 2)) - LOSS["m"])


def test_relative_margin_threshold(tmp_path):
    """loss.m_mode=relative: a hinge is active above bottom-k x (1 - m), not bottom-k - m."""
    loss = {**LOSS, "m": 0.25, "m_mode": "relative"}
    truth = _study(tmp_path, loss, rng=random.Random(7))
    s = summarize(edge_histories(str(tmp_path)))
    assert s["loss"]["m_mode"] == "relative"
    for i in range(4):
        assert s["active_above"]["mean"][i] == pytest.approx(
            statistics.fmean(truth[seed][i]["energy_id_bottomk"] * 0.75 for seed in (0, 1, 2)))


def test_command_writes_figure_json_and_table(tmp_path, capsys):
    _study(tmp_path / "a", LOSS)
    _study(tmp_path / "b", {**LOSS, "m": 5.0, "beta": 1.0}, rng=random.Random(1))
    out = tmp_path / "gap"
    assert main([f"untuned={tmp_path / 'a'}", f"tuned={tmp_path / 'b'}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "gap.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "gap.json").read_text())
    assert saved["tuned"]["loss"]["m"] == 5.0 and saved["untuned"]["loss"]["m"] == 3.0
    assert printed.count("| untuned (3 seeds) |") == 4 and printed.count("| tuned (3 seeds) |") == 4


def test_bad_inputs_say_what_is_wrong(tmp_path, capsys):
    _study(tmp_path / "a", LOSS, methods=("oe",))
    assert main([f"x={tmp_path / 'a'}", "--out", str(tmp_path / "g")]) == 2
    assert "has no EDGE runs" in capsys.readouterr().err
    _study(tmp_path / "b", LOSS)
    (tmp_path / "b" / "runs" / "compare-edge-seed1" / "summary.json").unlink()
    assert main([f"x={tmp_path / 'b'}", "--out", str(tmp_path / "g")]) == 2
    assert "compare-edge-seed1/summary.json: the run's training summary is missing" in capsys.readouterr().err
    assert main([str(tmp_path / "b"), "--out", str(tmp_path / "g")]) == 2
    assert "write LABEL=COMPARE_OUT" in capsys.readouterr().err
    mixed = [{"seed": 0, "loss": LOSS, "history": []}, {"seed": 1, "loss": {**LOSS, "m": 1.0}, "history": []}]
    with pytest.raises(ValueError, match="different loss values"):
        summarize(mixed)


def test_training_run_folders_and_a_mix(tmp_path, capsys):
    """A `launch.py train` run folder (summary.json, config in its checkpoint) counts as a seed
    beside a compare folder's runs; a non-EDGE run folder is refused."""
    truth = _study(tmp_path / "c", LOSS, seeds=(0, 1))
    run = tmp_path / "run-seed7"
    (run / "ckpt").mkdir(parents=True)
    rng = random.Random(5)
    history = [{"epoch": e + 1, "gap_active": rng.random(), "energy_id_bottomk": rng.uniform(2, 9),
                "energy_oe": rng.uniform(0, 1)} for e in range(4)]
    (run / "summary.json").write_text(json.dumps({"checkpoint": str(run / "ckpt"), "history": history}))
    (run / "ckpt" / "config.json").write_text(json.dumps({"loss": {**LOSS, "method": "edge"}, "train": {"seed": 7}}))
    from edge_ray.compare.gap import histories

    runs = histories(f"{tmp_path / 'c'},{run}")
    assert sorted(r["seed"] for r in runs) == [0, 1, 7]
    s = summarize(runs)
    values = [truth[0][2]["energy_oe"], truth[1][2]["energy_oe"], history[2]["energy_oe"]]
    assert s["energy_oe"]["mean"][2] == pytest.approx(statistics.fmean(values))
    assert s["gap_on"] == [False, False, True, True]   # from tau where a run did not log beta_active
    (run / "ckpt" / "config.json").write_text(json.dumps({"loss": {**LOSS, "method": "oe"}, "train": {"seed": 7}}))
    assert main([f"x={run}", "--out", str(tmp_path / "g")]) == 2
    assert "a oe run; the gap diagnostics are EDGE's" in capsys.readouterr().err
    assert main([f"x={tmp_path / 'nothing'}", "--out", str(tmp_path / "g")]) == 2
    assert "neither a `compare` output folder" in capsys.readouterr().err
