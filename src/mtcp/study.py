"""``mtcp study``: a declarative comparison of runs, each through the real CLI, with seeds and one budget.

    python -m mtcp.study configs/studies/paper_claims.yaml [--quick] [--only RUN] [--out DIR]
    make study STUDY=configs/studies/paper_claims.yaml [QUICK=1]

A study file names a base stack of configs, a budget (CLI overrides applied to every run,
e.g. epochs, data size, image size), the seeds, and the runs: each a stack of existing
configs plus overrides, optionally marked as the single-task reference of one task. Every
(run, seed) is ``mtcp fit`` then ``mtcp test`` on its ``last.ckpt``, in
``<out>/<run>/seed<k>/``, in a subprocess (exactly what a user would type). A finished run
(its ``test_metrics.json`` exists) is not run again, so an interrupted study picks up
where it stopped. Then the study writes, in ``<out>/``:

- ``results.md``: per run the headline metric of every task, the coherence metrics and
  Delta_m against the study's single-task runs (mean +- sample std over the seeds);
- ``results.json``: the same numbers, and every seed's metrics;
- ``results.png``: per-task headline metric per run, and the task weights over training
  of the runs whose weights move (from their CSV logs).

``--only RUN`` (or ``RUN:SEED``) runs one job and writes nothing else: one W&B sweep agent
job, or one GPU, per run; any later call collects them. ``--sweep`` prints the W&B sweep
that dispatches every (run, seed) as one agent job:

    python -m mtcp.study configs/studies/paper_claims.yaml --sweep > study_sweep.yaml
    wandb sweep study_sweep.yaml        # then `make agent SWEEP_ID=...` on every machine
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtcp.metrics.delta_m import delta_m
from mtcp.tasks import headlines


@dataclass(frozen=True)
class StudyRun:
    """One entry of a study: configs stacked over the study's base, then overrides."""

    name: str
    configs: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    single_task: str | None = None  # this run is the single-task reference of that task
    seeds: tuple[int, ...] | None = None  # None: the study's seeds (e.g. one seed for a setting being tuned)


@dataclass(frozen=True)
class Study:
    name: str
    base: tuple[str, ...]
    budget: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: tuple[StudyRun, ...]
    quick: tuple[str, ...] = field(default=())

    def seeds_of(self, run: StudyRun) -> tuple[int, ...]:
        return self.seeds if run.seeds is None else run.seeds

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """Read and check a study file; every problem names the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        where = f"study file {str(path)!r}"
        unknown = set(data) - {"name", "base", "budget", "quick", "seeds", "runs"}
        if unknown:
            raise ValueError(
                f"{where}: unknown keys {sorted(unknown)}; expected name, base, budget, quick, seeds, runs")
        def resolve(config: str, owner: str) -> str:
            # relative to the working directory, else to a folder above the study file (the project root)
            for candidate in (Path(config), *(parent / config for parent in path.resolve().parents)):
                if candidate.is_file():
                    return str(candidate.resolve())
            raise FileNotFoundError(f"{where}: {owner} stacks {config!r}, which does not exist")

        runs = []
        for i, entry in enumerate(data.get("runs") or []):
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(f"{where}: runs[{i}] needs a name (and optional configs, overrides, single_task, "
                                 "seeds)")
            extra = set(entry) - {"name", "configs", "overrides", "single_task", "seeds"}
            if extra:
                raise ValueError(f"{where}: runs[{i}] ({entry['name']}) has unknown keys {sorted(extra)}")
            configs = tuple(resolve(c, f"run {entry['name']!r}") for c in entry.get("configs") or ())
            run_seeds = entry.get("seeds")
            if run_seeds is not None and (not isinstance(run_seeds, list) or not run_seeds):
                raise ValueError(f"{where}: runs[{i}].seeds ({entry['name']}) must be a non-empty list of seeds; "
                                 f"got {run_seeds!r}")
            runs.append(StudyRun(str(entry["name"]), configs,
                                 _overrides(entry.get("overrides"), f"{where}: runs[{i}].overrides"),
                                 entry.get("single_task"),
                                 None if run_seeds is None else tuple(int(s) for s in run_seeds)))
        if not runs:
            raise ValueError(f"{where}: no runs")
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: run names must be unique; got {names}")
        seeds = tuple(int(s) for s in data.get("seeds") or (0,))
        base = tuple(resolve(c, "base") for c in data.get("base") or ())
        return cls(str(data.get("name", path.stem)), base,
                   _overrides(data.get("budget"), f"{where}: budget"), seeds, tuple(runs),
                   _overrides(data.get("quick"), f"{where}: quick"))


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    """``{key: value}`` as ``--key=value`` CLI arguments (YAML/JSON values), in order."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping of CLI keys to values; got {value!r}")
    return tuple(f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value.items())


# -- running ---------------------------------------------------------------------------
def run_dir(out: Path, run: StudyRun, seed: int) -> Path:
    return out / run.name / f"seed{seed}"


def command(study: Study, run: StudyRun, seed: int, out: Path, subcommand: str, quick: bool) -> list[str]:
    """The ``mtcp <subcommand>`` arguments of one (run, seed)."""
    d = run_dir(out, run, seed)
    configs = [a for c in (*study.base, *run.configs) for a in ("--config", c)]
    args = [sys.executable, "-m", "mtcp", subcommand, *configs, *study.budget, *(study.quick if quick else ()),
            *run.overrides, f"--seed_everything={seed}", f"--trainer.default_root_dir={d}",
            f"--trainer.logger.init_args.save_dir={d}", f"--checkpoint.dirpath={d / 'checkpoints'}",
            "--trainer.enable_progress_bar=false"]
    if subcommand == "test":
        args.append(f"--ckpt_path={d / 'checkpoints' / 'last.ckpt'}")
    return args


def run_one(study: Study, run: StudyRun, seed: int, out: Path, quick: bool) -> float:
    """fit + test of one (run, seed) unless already done; the seconds it took (0 when skipped)."""
    d = run_dir(out, run, seed)
    if (d / "test_metrics.json").is_file():
        return 0.0
    d.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for subcommand in ("fit", "test"):
        log = d / f"{subcommand}.log"
        with log.open("w") as handle:
            proc = subprocess.run(command(study, run, seed, out, subcommand, quick), stdout=handle,
                                  stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"})
        if proc.returncode != 0:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"study {study.name!r}: run {run.name!r} seed {seed} failed in `mtcp {subcommand}` "
                               f"(exit {proc.returncode}); log {str(log)!r}:\n{tail}")
    return time.monotonic() - start


# -- collecting ------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def final_val_metrics(run_directory: Path) -> dict[str, float]:
    """The ``val/`` metrics of the fit's last epoch (those of ``last.ckpt``), from its CSV log."""
    for path in sorted(run_directory.glob("logs/version_*/metrics.csv"),
                       key=lambda p: int(p.parent.name.removeprefix("version_")), reverse=True):
        with path.open() as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("val/loss")]
        if rows:
            return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}
    return {}


def _references(study: Study, per_run: dict[str, list[dict[str, float]]], split: str) -> dict[str, float]:
    """Single-task references: the mean over seeds of each single-task run's headline metric."""
    references: dict[str, float] = {}
    for run in study.runs:
        if run.single_task and per_run[run.name]:
            (line,) = headlines([run.single_task])
            key = f"{split}/{line.key}"
            if all(key in m for m in per_run[run.name]):
                references[key] = _mean_std([m[key] for m in per_run[run.name]])[0]
    return references


def collect(study: Study, out: Path) -> dict[str, Any]:
    """Every finished run's metrics, the per-run means and stds, and Delta_m against the single-task runs.

    Delta_m is computed on the test split (for reporting) and on the val split (for choosing a
    setting such as LPS's kappa without looking at the test split)."""
    per_run: dict[str, list[dict[str, float]]] = {}
    per_run_val: dict[str, list[dict[str, float]]] = {}
    for run in study.runs:
        dirs = [run_dir(out, run, s) for s in study.seeds_of(run)]
        done = [d for d in dirs if (d / "test_metrics.json").is_file()]
        per_run[run.name] = [json.loads((d / "test_metrics.json").read_text()) for d in done]
        per_run_val[run.name] = [final_val_metrics(d) for d in done]
    references = _references(study, per_run, "test")
    val_references = _references(study, per_run_val, "val")
    summary: dict[str, Any] = {"study": study.name, "seeds": list(study.seeds), "runs": {}}
    for run in study.runs:
        seeds = per_run[run.name]
        if not seeds:
            continue
        tasks = [k[len("test/loss_"):] for k in seeds[0] if k.startswith("test/loss_")]
        keys = sorted({k for m in seeds for k in m if k.startswith("test/")})
        row: dict[str, Any] = {"seeds": seeds, "seed_ids": list(study.seeds_of(run))[:len(seeds)], "tasks": tasks,
                               "mean": {k: _mean_std([m.get(k, math.nan) for m in seeds])[0] for k in keys},
                               "std": {k: _mean_std([m.get(k, math.nan) for m in seeds])[1] for k in keys}}
        lines = headlines(tasks)
        if len(tasks) > 1 and all(f"test/{h.key}" in references for h in lines):
            row["delta_m_per_seed"] = [delta_m(m, references, lines, "test") for m in seeds]
            row["delta_m"] = _mean_std(row["delta_m_per_seed"])
        val_seeds = per_run_val[run.name]
        if len(tasks) > 1 and all(f"val/{h.key}" in val_references and f"val/{h.key}" in m
                                  for h in lines for m in val_seeds):
            row["val_delta_m_per_seed"] = [delta_m(m, val_references, lines, "val") for m in val_seeds]
            row["val_delta_m"] = _mean_std(row["val_delta_m_per_seed"])
        summary["runs"][run.name] = row
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The results table: headline metrics, coherence and Delta_m per run (mean +- std over seeds)."""
    runs = summary["runs"]
    tasks = list(dict.fromkeys(t for row in runs.values() for t in row["tasks"]))
    lines_by_task = {h.task: h for h in headlines(tasks)}
    coherence = sorted({k for row in runs.values() for k in row["mean"] if k.startswith("test/coherence/")})
    header = ["run", *(f"{t} {h.metric} {'↑' if h.higher_is_better else '↓'}" for t, h in lines_by_task.items()),
              *(k.removeprefix("test/coherence/") for k in coherence), "Δm (%) ↑", "val Δm (%) ↑", "seeds"]
    out = [f"Study `{summary['study']}`, seeds {summary['seeds']}: mean ± std over seeds, test split; "
           "val Δm (last epoch, val split) is the column to choose settings by.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in runs.items():
        cells = [name]
        for key in [f"test/{h.key}" for h in lines_by_task.values()] + coherence:
            m, s = row["mean"].get(key, math.nan), row["std"].get(key, math.nan)
            cells.append("—" if not math.isfinite(m) else f"{m:.3f} ± {s:.3f}")
        for dm in (row.get("delta_m"), row.get("val_delta_m")):
            cells.append("—" if dm is None else f"{dm[0]:+.2f} ± {dm[1]:.2f}")
        cells.append(",".join(str(s) for s in row["seed_ids"]))
        out.append("| " + " | ".join(cells) + " |")
    finished = summary.get("finished", {})
    missing = {run: len(expected) - len(seeds) for run, (seeds, expected) in finished.items()
               if len(seeds) < len(expected)}
    if missing:
        out += ["", "Not finished yet (seeds missing): " + ", ".join(f"{r} ({n})" for r, n in missing.items())
                + ". The study resumes: run it again."]
    return "\n".join(out) + "\n"


def _weights_history(log_root: Path) -> dict[str, list[float]]:
    """``train/weight_<task>`` per step from the CSV logger's metrics.csv files under ``log_root``."""
    history: dict[str, list[float]] = {}
    for path in sorted(log_root.glob("logs/version_*/metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key.startswith("train/weight_") and value:
                        history.setdefault(key.removeprefix("train/weight_"), []).append(float(value))
    return history


def picture(study: Study, summary: dict[str, Any], out: Path, path: Path) -> None:
    """Top row: headline metric per run and task, and Delta_m (bars with the seed std); bottom row: one
    panel per dynamic balancer with its task weights over training (first seed), one colour per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    tasks = list(dict.fromkeys(t for row in runs.values() for t in row["tasks"]))
    moving: dict[str, tuple[int, dict[str, list[float]]]] = {}
    for run in study.runs:
        if run.name in runs:
            first = study.seeds_of(run)[0]
            history = _weights_history(run_dir(out, run, first))
            if any(len(set(v)) > 1 for v in history.values()):
                moving[run.name] = first, history
    with_delta = [n for n, row in runs.items() if "delta_m" in row]
    cols = max(len(tasks) + bool(with_delta), len(moving), 1)
    rows = 2 if moving else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    bars = [(f"test/{h.key}", f"{h.task} {h.metric} ({'higher' if h.higher_is_better else 'lower'} is better)")
            for h in headlines(tasks)]
    for ax, (key, title) in zip(axes[0], bars, strict=False):
        names = [n for n, row in runs.items() if key in row["mean"]]
        ax.set_visible(True)
        ax.barh(names, [runs[n]["mean"][key] for n in names], xerr=[runs[n]["std"][key] for n in names])
        ax.set_title(title)
        ax.invert_yaxis()
    if with_delta:
        ax = axes[0][len(bars)]
        ax.set_visible(True)
        ax.barh(with_delta, [runs[n]["delta_m"][0] for n in with_delta],
                xerr=[runs[n]["delta_m"][1] for n in with_delta])
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title("Δm vs the single-task runs (%, higher is better)")
        ax.invert_yaxis()
    colours = {t: f"C{i}" for i, t in enumerate(tasks)}
    for ax, (name, (seed, history)) in zip(axes[-1] if moving else [], moving.items(), strict=False):
        ax.set_visible(True)
        for task, values in history.items():
            ax.plot(values, label=task, color=colours.get(task), linewidth=1.2)
        ax.set_title(f"{name} weights, seed {seed}", fontsize=10)
        ax.set_xlabel("logged training step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_config(study: Study, study_file: str, quick: bool) -> dict[str, Any]:
    """A W&B grid sweep whose jobs are the study's (run, seed) pairs, each ``--only RUN:SEED``."""
    jobs = [f"{r.name}:{s}" for r in study.runs for s in study.seeds_of(r)]
    return {
        "name": f"study-{study.name}",
        "method": "grid",
        "command": ["${env}", ".venv/bin/python", "-m", "mtcp.study", study_file, *(["--quick"] if quick else []),
                    "${args}"],
        "parameters": {"only": {"values": jobs}},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m mtcp.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a study file, e.g. configs/studies/paper_claims.yaml")
    parser.add_argument("--quick", action="store_true", help="the study file's quick budget (CI-sized)")
    parser.add_argument("--only", default=None, help="RUN or RUN:SEED: run that job only (one sweep/agent job)")
    parser.add_argument("--out", default=None, help="output folder (default runs/studies/<name>[-quick])")
    parser.add_argument("--sweep", action="store_true", help="print the W&B sweep of the study's jobs and stop")
    parser.add_argument("--collect", action="store_true", help="run nothing: report the runs finished so far")
    args = parser.parse_args(argv)
    study = Study.load(args.study)
    if args.sweep:
        config = sweep_config(study, args.study, args.quick)
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return config
    out = Path(args.out or f"runs/studies/{study.name}{'-quick' if args.quick else ''}")
    jobs = [(r, s) for r in study.runs for s in study.seeds_of(r)]
    if args.only:
        name, _, seed = args.only.partition(":")
        jobs = [(r, s) for r, s in jobs if r.name == name and (not seed or s == int(seed))]
        if not jobs:
            raise SystemExit(f"--only {args.only!r}: no such run; runs are {[r.name for r in study.runs]}, "
                             f"seeds {list(study.seeds)}")
    if args.collect:
        jobs = []
    start = time.monotonic()
    for i, (run, seed) in enumerate(jobs, 1):
        took = run_one(study, run, seed, out, args.quick)
        print(f"[{i}/{len(jobs)}] {run.name} seed {seed}: " + (f"{took:.0f} s" if took else "done before"), flush=True)
    if args.only:
        return {}
    summary = collect(study, out)
    summary["wall_seconds_this_call"] = time.monotonic() - start
    summary["finished"] = {
        r.name: [[s for s in study.seeds_of(r) if (run_dir(out, r, s) / "test_metrics.json").is_file()],
                 list(study.seeds_of(r))]
        for r in study.runs}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    (out / "results.md").write_text(table)
    picture(study, summary, out, out / "results.png")
    print(table)
    print(f"wrote {out / 'results.md'}, results.json, results.png")
    return summary


if __name__ == "__main__":
    main()
