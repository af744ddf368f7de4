"""`python -m mtcp.study`: the paper's study file is valid, and a tiny study runs end to end through the real
CLI, resumes without re-running, and reports Delta_m exactly as the per-run metric files give it."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from conftest import ROOT
from mtcp.cli import cli_main
from mtcp.study import Study, command, main

PAPER = ROOT / "configs/studies/paper_claims.yaml"


def test_the_paper_study_names_every_claim_and_each_run_parses(tmp_path, capsys):
    study = Study.load(PAPER)
    names = {r.name for r in study.runs}
    assert {"single_semseg", "single_depth", "single_normals", "plain_mtl", "mtcp", "mtcp_no_cfm",
            "mtcp_no_trace_back", "mtcp_no_query_decoder", "mtcp_fixed", "mtcp_dwa", "mtcp_uncertainty",
            "mtcp_famo", "mtcp_lps"} <= names and len(study.seeds) >= 2
    kappas = {r.name: r for r in study.runs if r.name.startswith("mtcp_lps_kappa")}
    assert len(kappas) >= 2 and all(any(o.startswith("--balancer.init_args.spread=") for o in r.overrides)
                                    for r in kappas.values())
    assert {r.single_task for r in study.runs if r.single_task} == {"semseg", "depth", "normals"}
    for run in study.runs:
        args = command(study, run, study.seeds[0], tmp_path, "fit", quick=True)[3:]  # without python -m mtcp
        with pytest.raises(SystemExit) as stop:
            cli_main([*args, "--print_config"])
        assert stop.value.code in (0, None), (run.name, capsys.readouterr().err[-1500:])
        capsys.readouterr()


def test_the_study_sweep_dispatches_every_run_and_seed_once(capsys):
    import sweeps
    import yaml

    config = main([str(PAPER), "--sweep"])
    assert yaml.safe_load(capsys.readouterr().out) == config
    assert sweeps.schema_violations_from_proposed_config(config) == []
    study = Study.load(PAPER)
    assert sorted(config["parameters"]["only"]["values"]) == sorted(
        f"{r.name}:{s}" for r in study.runs for s in study.seeds_of(r))
    assert config["command"][1:4] == [".venv/bin/python", "-m", "mtcp.study"] and config["command"][-1] == "${args}"


def test_a_run_may_use_its_own_seeds(tmp_path, capsys):
    study_file = tmp_path / "s.yaml"
    study_file.write_text("seeds: [0, 1]\nruns: [{name: a}, {name: tuned, seeds: [3]}]\n")
    config = main([str(study_file), "--sweep"])
    assert config["parameters"]["only"]["values"] == ["a:0", "a:1", "tuned:3"]
    study_file.write_text("runs: [{name: a, seeds: 3}]\n")
    with pytest.raises(ValueError, match=r"runs\[0\]\.seeds \(a\) must be a non-empty list"):
        Study.load(study_file)


def test_bad_study_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [{name: a, configs: [configs/nowhere.yaml]}]\n")
    with pytest.raises(FileNotFoundError, match=r"run 'a' stacks 'configs/nowhere.yaml'"):
        Study.load(bad)
    bad.write_text("runs: [{name: a}, {name: a}]\n")
    with pytest.raises(ValueError, match="run names must be unique"):
        Study.load(bad)
    bad.write_text("seed: [1]\nruns: [{name: a}]\n")
    with pytest.raises(ValueError, match=r"unknown keys \['seed'\]"):
        Study.load(bad)


@pytest.mark.slow
def test_a_tiny_study_runs_resumes_and_reports_delta_m_from_the_run_files(tmp_path, capsys):
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(f"""
name: tiny
base: [{ROOT / 'configs/procedural.yaml'}]
seeds: [0, 1]
budget:
  trainer.max_epochs: 1
  trainer.limit_train_batches: 2
  data.source.init_args.image_size: [32, 48]
  data.source.init_args.train_size: 16
  data.source.init_args.val_size: 4
  data.source.init_args.test_size: 8
  data.batch_size: 4
  data.num_workers: 0
  model.net.init_args.backbone.init_args.name: test_convnext
  model.net.init_args.dim: 16
runs:
  - {{name: single_semseg, overrides: {{data.tasks: [semseg]}}, single_task: semseg}}
  - {{name: single_depth, overrides: {{data.tasks: [depth]}}, single_task: depth}}
  - {{name: both, overrides: {{data.tasks: [semseg, depth]}}}}
""")
    out = tmp_path / "out"
    summary = main([str(study_file), "--out", str(out)])
    # Delta_m by hand from the per-run files: mIoU higher is better, RMSE lower is better, references are
    # the single-task runs' means over the seeds
    metrics = {(run, s): json.loads((out / run / f"seed{s}" / "test_metrics.json").read_text())
               for run in ("single_semseg", "single_depth", "both") for s in (0, 1)}
    s_miou = (metrics["single_semseg", 0]["test/semseg/miou"] + metrics["single_semseg", 1]["test/semseg/miou"]) / 2
    s_rmse = (metrics["single_depth", 0]["test/depth/rmse"] + metrics["single_depth", 1]["test/depth/rmse"]) / 2
    by_seed = [((metrics["both", s]["test/semseg/miou"] - s_miou) / s_miou
                - (metrics["both", s]["test/depth/rmse"] - s_rmse) / s_rmse) * 100 / 2 for s in (0, 1)]
    mean, std = summary["runs"]["both"]["delta_m"]
    assert mean == pytest.approx(statistics.fmean(by_seed), abs=1e-9)
    assert std == pytest.approx(statistics.stdev(by_seed), abs=1e-9)
    assert summary["runs"]["both"]["delta_m_per_seed"] == pytest.approx(by_seed, abs=1e-9)
    assert "delta_m" not in summary["runs"]["single_semseg"]
    # val Delta_m: the same arithmetic on each run's last logged val row (what last.ckpt scores on val)
    def last_val(run, s):
        rows = [r for r in csv.DictReader((out / run / f"seed{s}" / "logs/version_0/metrics.csv").open())
                if r["val/loss"]]
        return rows[-1]
    v_miou = statistics.fmean(float(last_val("single_semseg", s)["val/semseg/miou"]) for s in (0, 1))
    v_rmse = statistics.fmean(float(last_val("single_depth", s)["val/depth/rmse"]) for s in (0, 1))
    val_by_seed = [((float(last_val("both", s)["val/semseg/miou"]) - v_miou) / v_miou
                    - (float(last_val("both", s)["val/depth/rmse"]) - v_rmse) / v_rmse) * 100 / 2 for s in (0, 1)]
    assert summary["runs"]["both"]["val_delta_m"][0] == pytest.approx(statistics.fmean(val_by_seed), abs=1e-9)
    assert summary["runs"]["both"]["val_delta_m_per_seed"] == pytest.approx(val_by_seed, abs=1e-9)
    assert summary["runs"]["both"]["val_delta_m"][0] != pytest.approx(mean, abs=1e-6)  # a different split
    table = (out / "results.md").read_text().splitlines()
    header = [c.strip() for c in table[2].strip("|").split("|")]
    assert header[0] == "run" and header[1].startswith("semseg miou") and header[2].startswith("depth rmse")
    assert header[-3].startswith("Δm") and header[-2].startswith("val Δm") and header[-1] == "seeds"
    rows = {line.split("|")[1].strip(): line for line in table[4:] if line.startswith("|")}
    assert set(rows) == {"single_semseg", "single_depth", "both"}
    assert f"{mean:+.2f} ± {std:.2f}" in rows["both"]
    assert json.loads((out / "results.json").read_text())["runs"]["both"]["delta_m"] == [mean, std]
    assert (out / "results.png").stat().st_size > 1000
    # resumed: nothing runs again, the same numbers come back
    capsys.readouterr()
    again = main([str(study_file), "--out", str(out)])
    assert capsys.readouterr().out.count("done before") == 6
    assert list(again["runs"]["both"]["delta_m"]) == [mean, std]
    collected = main([str(study_file), "--out", str(out), "--collect"])  # reports without running
    assert collected["finished"] == {"single_semseg": [[0, 1], [0, 1]], "single_depth": [[0, 1], [0, 1]],
                                     "both": [[0, 1], [0, 1]]}
