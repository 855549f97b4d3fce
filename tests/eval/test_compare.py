"""Paired comparison and seed aggregation (vla.eval.compare) on evaluation folders written by the results log:
identical runs, a known discordant pattern against scipy's exact binomial test, settings and episode checks,
multi-seed pairing, the cluster bootstrap, the CLI's files and errors, and real CALVIN runs (fake backend)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import t as student_t
from typer.testing import CliRunner

from vla.cli import app, main
from vla.errors import ComparisonError
from vla.eval.compare import (
    aggregate_seeds,
    cluster_bootstrap,
    compare_runs,
    format_difference,
    load_eval,
    settings_difference,
)
from vla.statistics import wilson_interval
from vla.testing.eval_runs import SUITE, write_libero_run

runner = CliRunner()


def outcomes(pattern: str, task: int = 0, first_state: int = 0) -> dict[tuple[int, int], bool]:
    """'1101' -> {(task, 0): True, (task, 1): True, (task, 2): False, (task, 3): True}."""
    return {(task, first_state + i): c == "1" for i, c in enumerate(pattern)}


def test_identical_runs_differ_by_nothing(tmp_path):
    pattern = {**outcomes("1101100111", task=0), **outcomes("0011101000", task=1)}
    a = write_libero_run(tmp_path / "a", pattern, policy="/ckpt/a")
    b = write_libero_run(tmp_path / "b", pattern, policy="/ckpt/b")  # another policy path is not a protocol setting
    c = compare_runs([a], [b])
    assert c.difference == 0 and c.ci95[0] <= 0 <= c.ci95[1] and c.p_mcnemar == 1.0
    assert c.discordant == (0, 0) and c.n_pairs == 20 and c.n_seeds == 1
    assert c.rate_a == c.rate_b == 11 / 20 and c.rate_a_ci95 == pytest.approx(wilson_interval(11, 20))
    assert [t.task for t in c.tasks] == [f"{SUITE}/0", f"{SUITE}/1"] and all(t.difference == 0 for t in c.tasks)
    assert format_difference(c) == "0.0 [0.0, 0.0]"


def test_discordant_pairs_give_the_exact_mcnemar_p_value(tmp_path):
    # 30 pairs: 7 where only A succeeds, 2 where only B does, 12 both, 9 neither.
    a_pattern = "1111111" + "00" + "1" * 12 + "0" * 9
    b_pattern = "0000000" + "11" + "1" * 12 + "0" * 9
    a = write_libero_run(tmp_path / "a", outcomes(a_pattern))
    b = write_libero_run(tmp_path / "b", outcomes(b_pattern))
    c = compare_runs(a, b, n_boot=4000)
    assert c.discordant == (7, 2) and c.n_pairs == 30
    assert c.p_mcnemar == pytest.approx(binomtest(7, 9, 0.5).pvalue, rel=1e-12)
    assert c.difference == pytest.approx((7 - 2) / 30)
    assert c.rate_a == pytest.approx(19 / 30) and c.rate_b == pytest.approx(14 / 30)
    assert c.ci95[0] < c.difference < c.ci95[1]
    reverse = compare_runs(b, a, n_boot=4000)
    assert reverse.difference == pytest.approx(-c.difference) and reverse.discordant == (2, 7)
    assert reverse.p_mcnemar == pytest.approx(c.p_mcnemar)
    d, lo, hi = 100 * c.difference, 100 * c.ci95[0], 100 * c.ci95[1]
    assert format_difference(c) == f"{d:.1f} [{lo:.1f}, {hi:.1f}]"


def test_runs_with_the_same_folder_name_are_labelled_by_their_parents(tmp_path):
    a = write_libero_run(tmp_path / "mode" / "eval", outcomes("10"))
    b = write_libero_run(tmp_path / "dense" / "eval", outcomes("10"))
    c = compare_runs(a, b)
    assert (c.label_a, c.label_b) == ("mode/eval", "dense/eval")


def test_pairing_is_by_task_and_initial_state_not_by_log_order(tmp_path):
    pattern = outcomes("1100110011")
    a = write_libero_run(tmp_path / "a", pattern)
    b = write_libero_run(tmp_path / "b", dict(reversed(list(pattern.items()))))  # same outcomes, other order
    assert compare_runs(a, b).discordant == (0, 0)


def test_differing_protocol_settings_are_refused_naming_each(tmp_path):
    a = write_libero_run(tmp_path / "a", outcomes("1100"))
    b = write_libero_run(tmp_path / "b", outcomes("1100"), max_steps=300, preset="libero")
    with pytest.raises(ComparisonError) as e:
        compare_runs(a, b)
    msg = str(e.value)
    assert "max_steps" in msg and "280" in msg and "300" in msg
    assert "preset" in msg and "openpi" in msg and "libero" in msg
    assert "\n" not in msg
    assert set(settings_difference([a, b])) == {"max_steps", "preset"}
    # a setting that is part of what is compared may be allowed explicitly
    allowed = compare_runs(a, b, ignore_settings=["max_steps", "preset"])
    assert allowed.ignored_settings == {"max_steps": (280, 300), "preset": ("openpi", "libero")}


def test_policy_inputs_are_not_protocol_settings_but_render_settings_are(tmp_path):
    a = write_libero_run(tmp_path / "state", outcomes("1100"))  # state-only: renders no camera
    vision = dict(cameras=["agentview", "wrist"], image_size=128, image_settings_from="checkpoint data_spec.json")
    b = write_libero_run(tmp_path / "vision", outcomes("1110"), **vision)
    assert settings_difference([a, b]) == {}, "cameras and the image size of a state-only run do not count"
    compare_runs(a, b)
    c = write_libero_run(tmp_path / "vision224", outcomes("1110"), **{**vision, "image_size": 224})
    assert settings_difference([a, b, c]) == {"image_size": (256, 128, 224)}, "two runs that render must agree"


def test_other_episodes_are_refused_unless_intersected(tmp_path):
    a = write_libero_run(tmp_path / "a", outcomes("110011"))
    b = write_libero_run(tmp_path / "b", outcomes("1100", first_state=2))  # states 2..5 instead of 0..5
    with pytest.raises(ComparisonError, match="init_states"):
        compare_runs(a, b)
    c = compare_runs(a, b, intersect=True)
    assert c.n_pairs == 4 and c.unpaired == (2, 0)
    assert c.discordant == (2, 2)  # states 2..5: A 0011, B 1100
    # same settings but a shorter (unfinished) log: the episode sets differ
    short = write_libero_run(tmp_path / "short", outcomes("11"), init_states=[0, 1, 2, 3, 4, 5], trials_per_task=6)
    with pytest.raises(ComparisonError, match=r"did not run the same episodes.*4 only in"):
        compare_runs(a, short)


def test_perturbation_is_part_of_the_pairing_key_and_of_the_settings(tmp_path):
    plain = write_libero_run(tmp_path / "plain", outcomes("1100"))
    moved = write_libero_run(tmp_path / "moved", outcomes("1000"), perturbation={"objects": 0.05})
    moved_too = write_libero_run(tmp_path / "moved2", outcomes("0000"), perturbation={"objects": 0.05})
    with pytest.raises(ComparisonError, match="perturbation"):
        compare_runs(plain, moved)
    assert next(iter(load_eval(moved).outcomes))[2] == '{"objects": 0.05}'
    assert next(iter(load_eval(plain).outcomes))[2] is None, "runs without perturbation pair on None"
    assert compare_runs(moved, moved_too).discordant == (1, 0)


def seed_runs(tmp_path: Path, side: str, patterns: list[str], **settings) -> list[Path]:
    return [
        write_libero_run(tmp_path / f"{side}_s{i}", outcomes(p), run_seed=i, **settings) for i, p in enumerate(patterns)
    ]


def test_seeds_are_paired_in_order_and_averaged_per_seed(tmp_path):
    a = seed_runs(tmp_path, "a", ["1111100000", "1111111111", "1100000000"])
    b = seed_runs(tmp_path, "b", ["1100000000", "1111111100", "1100000000"])
    c = compare_runs(a, b, n_boot=2000)
    assert c.n_seeds == 3 and c.n_pairs == 30
    assert c.seed_differences == pytest.approx([0.3, 0.2, 0.0]), "seed i of A against seed i of B"
    assert c.difference == pytest.approx(np.mean([0.3, 0.2, 0.0]))
    assert c.discordant == (5, 0) and c.p_mcnemar == pytest.approx(binomtest(5, 5, 0.5).pvalue)
    assert c.label_a == "a (3 seeds)" and c.label_b == "b (3 seeds)"
    # the cluster bootstrap spans at least the spread between seeds' differences
    assert c.ci95[0] <= 0.05 and c.ci95[1] >= 0.25
    d = [0.3, 0.2, 0.0]
    lo, hi = student_t.interval(0.95, 2, loc=np.mean(d), scale=np.std(d, ddof=1) / np.sqrt(3))
    assert c.seed_t_ci95 == pytest.approx((lo, hi))
    assert format_difference(c, interval="t") == f"{100 * np.mean(d):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert compare_runs(a[0], b[0], n_boot=10).seed_t_ci95 is None, "one seed: no interval across seeds"
    with pytest.raises(ComparisonError, match=r"a \(3 seeds\) has 3 runs and b \(2 seeds\) has 2"):
        compare_runs(a, b[:2])


def test_run_seeds_may_differ_across_seeds_but_not_within_a_pair(tmp_path):
    a = seed_runs(tmp_path, "a", ["1100", "1010"])
    b = seed_runs(tmp_path, "b", ["1100", "1010"])
    compare_runs(a, b)  # run_seed 0 with 0, 1 with 1
    with pytest.raises(ComparisonError, match="run_seed"):
        compare_runs(a, b[::-1])  # seed 0 of A against seed 1 of B


def test_bootstrap_is_reproducible_and_matches_resampling_indices():
    rng = np.random.default_rng(1)
    diffs = [rng.choice([-1, 0, 0, 1, 1], size=n).astype(np.int8) for n in (30, 30, 20)]
    first = cluster_bootstrap(diffs, 5000, np.random.default_rng(7))
    assert first == cluster_bootstrap(diffs, 5000, np.random.default_rng(7))
    # the same statistic by brute force: draw seeds, then episode indices
    brute_rng = np.random.default_rng(3)
    reps = []
    for _ in range(5000):
        seeds = brute_rng.integers(3, size=3)
        reps.append(np.mean([diffs[s][brute_rng.integers(len(diffs[s]), size=len(diffs[s]))].mean() for s in seeds]))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert first == pytest.approx((lo, hi), abs=0.04)


def test_comparison_is_reproducible_with_its_seed(tmp_path):
    a = write_libero_run(tmp_path / "a", outcomes("1110110100"))
    b = write_libero_run(tmp_path / "b", outcomes("0110010110"))
    assert compare_runs(a, b, seed=5).to_json() == compare_runs(a, b, seed=5).to_json()


def test_seed_aggregation_gives_a_t_interval_across_seeds(tmp_path):
    patterns = ["1111100000", "1111111100", "1111110000"]  # 50%, 80%, 60%
    runs = [
        write_libero_run(tmp_path / f"s{i}", {**outcomes(p), **outcomes("10", task=1)}, run_seed=i)
        for i, p in enumerate(patterns)
    ]
    s = aggregate_seeds(runs)
    rates = [6 / 12, 9 / 12, 7 / 12]
    assert s.overall.rates == pytest.approx(rates) and s.overall.mean == pytest.approx(np.mean(rates))
    lo, hi = student_t.interval(0.95, 2, loc=np.mean(rates), scale=np.std(rates, ddof=1) / np.sqrt(3))
    assert s.overall.ci95 == pytest.approx((max(lo, 0), min(hi, 1)))
    assert s.overall.pooled_ci95 == pytest.approx(wilson_interval(22, 36))
    task1 = next(t for t in s.tasks if t.task == f"{SUITE}/1")
    assert task1.rates == [0.5, 0.5, 0.5] and task1.ci95 == pytest.approx((0.5, 0.5))
    single = aggregate_seeds(runs[:1])
    assert single.overall.ci95 is None and "one seed: no interval" in single.note


def test_aggregation_refuses_other_protocols(tmp_path):
    a = write_libero_run(tmp_path / "a", outcomes("10"))
    b = write_libero_run(tmp_path / "b", outcomes("10"), max_steps=100)
    with pytest.raises(ComparisonError, match="max_steps"):
        aggregate_seeds([a, b])


def test_not_an_evaluation_folder(tmp_path):
    with pytest.raises(ComparisonError, match=r"run\.json: missing"):
        load_eval(tmp_path)


def test_cli_compare_writes_table_markdown_json_and_plot(tmp_path):
    base = seed_runs(tmp_path, "base", ["1100000000", "1000000000"])
    new = seed_runs(tmp_path, "new", ["1111110000", "1111000000"])
    other = seed_runs(tmp_path, "other", ["1100000000", "1000000001"])
    sides = [",".join(map(str, s)) for s in (base, new, other)]
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["eval", "compare", *sides, "--out", str(out), "--n-boot", "500"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "new (2 seeds) − base (2 seeds)" in result.output and "McNemar" in result.output
    data = json.loads((out / "compare.json").read_text())
    assert [round(c["difference"], 6) for c in data["comparisons"]] == [0.35, 0.05], "each run minus the baseline"
    direct = compare_runs(new, base, n_boot=500)
    assert data["comparisons"][0]["ci95"] == pytest.approx(list(direct.ci95))
    md = (out / "compare.md").read_text()
    assert format_difference(direct) in md and "![difference per task](compare.png)" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    agg = runner.invoke(
        app, ["eval", "aggregate", *map(str, new), "--out", str(tmp_path / "agg")], env={"COLUMNS": "200"}
    )
    assert agg.exit_code == 0, agg.output
    assert "mean [95% t-CI]" in agg.output
    assert json.loads((tmp_path / "agg" / "aggregate.json").read_text())["overall"]["mean"] == pytest.approx(0.5)


def test_cli_refuses_other_settings_with_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    a = write_libero_run(tmp_path / "a", outcomes("10"))
    b = write_libero_run(tmp_path / "b", outcomes("10"), max_steps=100)
    monkeypatch.setattr(sys, "argv", ["vla", "eval", "compare", str(a), str(b), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "max_steps (b: 100, a: 280)" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_real_calvin_runs_compare_on_chains(tmp_path):
    """Two real evaluations (the CALVIN protocol on the fake backend): the scripted planner against the
    random policy, paired on chains, success = at least one subtask."""
    from vla.eval.protocols.calvin import CalvinEvalConfig, evaluate_calvin
    from vla.testing.calvin_fake import FakeBackendFactory, ScriptedPlanner

    chains = [0, 1, 4, 13, 19]  # the scripted planner completes 0, 1, 4, 2 and 5 subtasks of these
    common = {"backend": FakeBackendFactory(), "chain_ids": chains}
    evaluate_calvin(CalvinEvalConfig(out=tmp_path / "scripted", policy=ScriptedPlanner(), **common), progress=False)
    evaluate_calvin(CalvinEvalConfig(out=tmp_path / "random", policy="random", **common), progress=False)
    run = load_eval(tmp_path / "scripted", position=1)
    assert run.complete and set(run.outcomes) == {("calvin", i, None) for i in chains}
    c = compare_runs(tmp_path / "scripted", tmp_path / "random", position=1, n_boot=1000)
    assert c.n_pairs == 5 and c.rate_a == pytest.approx(4 / 5)
    assert c.discordant[0] - c.discordant[1] == round(5 * (c.rate_a - c.rate_b))
    whole = compare_runs(tmp_path / "scripted", tmp_path / "random", n_boot=1000)
    assert whole.rate_a == pytest.approx(1 / 5), "by default only a whole chain is a success"


@pytest.mark.slow
def test_real_libero_run_loads_pairs_and_aggregates(tmp_path):
    """A short real LIBERO evaluation (random policy, 5 steps): its folder pairs with a copy of itself on
    (task, initial state, no perturbation), and refuses a run with another step budget by name."""
    import shutil

    from tests.eval.helpers import eval_config
    from vla.eval.protocols.libero import evaluate_libero

    out = tmp_path / "random"
    evaluate_libero(eval_config(out, init_states=[0, 1], max_steps=5), progress=False)
    run = load_eval(out)
    assert run.complete and set(run.outcomes) == {("libero_object/1", 0, None), ("libero_object/1", 1, None)}
    shutil.copytree(out, tmp_path / "copy")
    c = compare_runs(out, tmp_path / "copy", n_boot=200)
    assert c.n_pairs == 2 and c.difference == 0 and c.p_mcnemar == 1.0
    assert aggregate_seeds([out, tmp_path / "copy"]).overall.rates == [run.rate, run.rate]
    settings = json.loads((out / "run.json").read_text())
    other = tmp_path / "longer"
    shutil.copytree(out, other)
    (other / "run.json").write_text(json.dumps({**settings, "max_steps": 6, "max_steps_source": "--max-steps"}))
    with pytest.raises(ComparisonError, match=r"max_steps \(random: 5, longer: 6\)"):
        compare_runs(out, other)
