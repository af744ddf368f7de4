"""Compare a run's validation metrics with trivial predictors on the same split.

The trivial predictors use training-split statistics only: the mean valid depth, the
mean valid normal (re-normalised), and the most frequent semantic class. They are
scored with the same metric classes as the model. The quality bar of `make fit`:
depth RMSE <= 0.6 x trivial, normals mean angle <= 0.7 x trivial, mIoU >= 2 x trivial.

    python benchmarks/trivial_baselines.py --config configs/procedural.yaml \
        --metrics runs/procedural/validate_metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch
from torch.utils.data import DataLoader

from mtcp.cli import cli_main
from mtcp.tasks import get_task

#: task -> (metric key, bar as a ratio model/trivial, True when higher is better)
BARS = {"depth": ("rmse", 0.6, False), "normals": ("mean", 0.7, False), "semseg": ("miou", 2.0, True)}


def training_statistics(loader: DataLoader, num_classes: int) -> dict[str, torch.Tensor]:
    depth_sum, depth_n = torch.zeros((), dtype=torch.float64), 0
    normal_sum = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for batch in loader:
        if "depth" in batch:
            valid = batch["depth"] > 0
            depth_sum += batch["depth"][valid].double().sum()
            depth_n += int(valid.sum())
        if "normals" in batch:
            n = batch["normals"].double()
            normal_sum += n.sum(dim=(0, 2, 3))
        if "semseg" in batch:
            lab = batch["semseg"]
            counts += torch.bincount(lab[lab != 255].flatten(), minlength=num_classes)[:num_classes]
    return {
        "depth": depth_sum / max(depth_n, 1),
        "normal": torch.nn.functional.normalize(normal_sum, dim=0),
        "class": counts.argmax(),
    }


def trivial_metrics(loader: DataLoader, stats: dict[str, torch.Tensor], task_channels: dict[str, int]) -> dict:
    metrics = {t: get_task(t).make_metric(c) for t, c in task_channels.items() if t in BARS}
    for batch in loader:
        b, _, h, w = batch["image"].shape
        for task, metric in metrics.items():
            if task == "depth":
                pred = torch.full((b, 1, h, w), float(stats["depth"]))
            elif task == "normals":
                pred = stats["normal"].float().view(1, 3, 1, 1).expand(b, 3, h, w)
            else:
                pred = torch.zeros(b, task_channels[task], h, w)
                pred[:, int(stats["class"])] = 1.0
            metric.update(pred, batch[task])
    return {t: {k: float(v) for k, v in m.compute().items()} for t, m in metrics.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="the run's config file(s)")
    parser.add_argument("--metrics", required=True, help="validate_metrics.json written by `mtcp validate`")
    parser.add_argument("--train-samples", type=int, default=500, help="training samples for the statistics")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a bar is not met")
    args = parser.parse_args(argv)

    cli_args = [a for c in args.config for a in ("--config", c)] + ["--trainer.logger=false"]
    with warnings.catch_warnings():  # this script's own options are not the CLI's, as Lightning suspects
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = cli_main(cli_args, run=False)
    dm = cli.datamodule
    train = torch.utils.data.Subset(dm.source.dataset("train", dm.tasks), range(args.train_samples))
    stats = training_statistics(DataLoader(train, batch_size=32), dm.task_channels.get("semseg", 1))
    trivial = trivial_metrics(DataLoader(dm.source.dataset("val", dm.tasks), batch_size=32), stats,
                              dm.task_channels)
    with open(args.metrics) as f:
        model = json.load(f)

    print(f"\n{'metric':<22}{'model':>10}{'trivial':>10}{'ratio':>9}{'bar':>10}  verdict")
    ok = True
    for task, (key, bar, higher) in BARS.items():
        if task not in trivial:
            continue
        m, t = model[f"val/{task}/{key}"], trivial[task][key]
        ratio = m / t if t else float("inf")
        passed = ratio >= bar if higher else ratio <= bar
        ok &= passed
        rule = f"{'>=' if higher else '<='} {bar:g}"
        print(f"{task + '/' + key:<22}{m:>10.4f}{t:>10.4f}{ratio:>9.3f}{rule:>10}  {'PASS' if passed else 'FAIL'}")
    print("\nall bars met" if ok else "\nsome bars NOT met")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
