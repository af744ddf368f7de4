"""`mtcp bench`: attention in the FLOP count, MFU, total peak memory, ``--compare``."""

import re
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtcp.bench
from conftest import ROOT  # noqa: E402
from mtcp.bench import flop_counter, parameters_and_flops, run, throughput
from mtcp.cli import cli_main

TINY = ["--config", str(ROOT / "configs/procedural.yaml"), "--config", str(ROOT / "configs/model/mtcp_tiny.yaml"),
        "--data.tasks=[semseg,depth]", "--model.net.init_args.backbone.init_args.name=test_convnext",
        "--model.net.init_args.dim=16", "--model.net.init_args.query_heads=2"]
B, H, LQ, LK, D = 2, 3, 50, 70, 8


class Attention(nn.Module):
    """Only attention: the input is q, k and v stacked along the sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = x.split([LQ, LK, LK], dim=2)
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_flops_are_counted_on_the_cpu_kernel():
    q = torch.rand(B, H, LQ, D, requires_grad=True)
    k, v = torch.rand(B, H, LK, D), torch.rand(B, H, LK, D)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # QK^T and AV: 2 multiply-adds per product term
    forward = 2 * B * H * LQ * LK * D + 2 * B * H * LQ * LK * D
    # recomputed QK^T, then dScores = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q
    backward = 5 * 2 * B * H * LQ * LK * D
    assert counts == {
        "aten._scaled_dot_product_flash_attention_for_cpu": forward,
        "aten._scaled_dot_product_flash_attention_for_cpu_backward": backward,
    }

    x = torch.rand(B, H, LQ + 2 * LK, D)
    _, flops, total = parameters_and_flops(Attention(), x)
    assert total == flops["other"] == 4 * H * LQ * LK * D  # per image


def test_steps_alternate_and_report_peak_total_and_delta():
    order: list[str] = []
    steps = {name: (lambda name=name: order.append(name) or torch.ones(2**20).sum()) for name in ("a", "b")}
    out = throughput(steps, images=4, warmup=1, repeats=2, device=torch.device("cpu"))
    assert order == ["a", "b"] * 3
    for m in out.values():
        assert m["ips"] > 0
        if sys.platform == "linux":
            assert m["total"] > 0 and m["total"] >= m["mem"] >= 0


def test_mfu_and_total_peak_memory_are_reported(capsys):
    cli = cli_main(TINY, run=False)
    r = run(cli.model, torch.device("cpu"), height=40, width=56, batch_size=2, warmup=0, repeats=1,
            matmul_size=256)
    out = capsys.readouterr().out
    assert r["peak_flops"] > 0 and r["total_flops"] > 0
    assert r["train_mfu"] == pytest.approx(100 * 3 * r["total_flops"] * r["train_ips"] / r["peak_flops"])
    assert r["infer_mfu"] == pytest.approx(100 * r["total_flops"] * r["infer_ips"] / r["peak_flops"])
    assert re.search(rf"^training: +\d+\.\d+ images/s +MFU +{r['train_mfu']:.2f}% +peak memory [\d,]+ MiB total, "
                     r"[\d,]+ MiB above resident", out, re.M)
    assert re.search(rf"^inference: +\d+\.\d+ images/s +MFU +{r['infer_mfu']:.2f}% ", out, re.M)
    if sys.platform == "linux":
        resident = int(re.search(r"^VmRSS:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
        for stage in ("train", "infer"):
            # the whole process (torch, the weights), not only the step's own allocations
            assert r[f"{stage}_peak_total"] > r[f"{stage}_mem"] >= 0
            assert r[f"{stage}_peak_total"] > resident / 2


def test_compare_builds_over_this_runs_configuration_and_prints_ratios(tmp_path, capsys, monkeypatch):
    returned = []
    real_run = mtcp.bench.run
    monkeypatch.setattr(mtcp.bench, "run", lambda *a, **k: returned.append(real_run(*a, **k)) or returned[-1])
    no_cfm = tmp_path / "no_cfm.yaml"
    no_cfm.write_text("model:\n  net:\n    init_args:\n      use_cfm: false\n")
    cli_main(["bench", *TINY, "--trainer.accelerator=cpu", "--height=40", "--width=56", "--batch_size=2",
              "--warmup=0", "--repeats=1", "--compare", str(no_cfm)])
    out = capsys.readouterr().out
    (r,) = returned
    other = r["compare"][str(no_cfm)]
    # this run's command-line settings hold for the comparison (test_convnext, dim 16); the config on top too
    assert other["params"]["backbone"] == r["params"]["backbone"] and other["tasks"] == r["tasks"]
    assert r["params"]["cfm"] > 0 and other["params"].get("cfm", 0) == 0
    for key in ("train_ips", "infer_ips", "train_peak_total", "infer_peak_total"):
        assert other[key] > 0 and r["ratios"][str(no_cfm)][key] == pytest.approx(other[key] / r[key])
    ratios = r["ratios"][str(no_cfm)]
    assert re.search(rf"^ratio {re.escape(str(no_cfm))} / first: training {ratios['train_ips']:.2f}x images/s, "
                     rf"inference {ratios['infer_ips']:.2f}x images/s; peak memory training "
                     rf"{ratios['train_peak_total']:.2f}x total", out, re.M)


def test_compare_runs_each_network_at_its_own_precision_and_stacks_a_plus_b(tmp_path, capsys, monkeypatch):
    returned = []
    real_run = mtcp.bench.run
    monkeypatch.setattr(mtcp.bench, "run", lambda *a, **k: returned.append(real_run(*a, **k)) or returned[-1])
    autocast_dtypes = []
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast",
                        lambda *a, **k: autocast_dtypes.append(k.get("dtype")) or real_autocast(*a, **k))
    no_cfm = tmp_path / "no_cfm.yaml"
    no_cfm.write_text("model:\n  net:\n    init_args:\n      use_cfm: false\n")
    both = f"{ROOT / 'configs/trainer/bf16.yaml'}+{no_cfm}"
    cli_main(["bench", *TINY, "--trainer.accelerator=cpu", "--height=40", "--width=56", "--batch_size=2",
              "--warmup=0", "--repeats=1", "--compare", both])
    out = capsys.readouterr().out
    (r,) = returned
    other = r["compare"][both]
    assert not r["bf16"] and other["bf16"]
    assert other["params"].get("cfm", 0) == 0 < r["params"]["cfm"]  # the second file of A+B holds too
    assert torch.bfloat16 in autocast_dtypes  # the comparison's steps ran under bf16 autocast
    # each MFU against its own dtype's peak, both measured in this run and printed
    assert other["peak_flops"] != r["peak_flops"]
    flop_rate = 3 * other["total_flops"] * other["train_ips"]
    assert other["train_mfu"] == pytest.approx(100 * flop_rate / other["peak_flops"])
    assert re.search(rf"matmul peak fp32 {r['peak_flops'] / 1e9:,.1f}, bf16 {other['peak_flops'] / 1e9:,.1f} GFLOP/s",
                     out)
    assert f"compare {both}: MTCPNet" in out and "| bf16" in out


def test_bf16_runs_under_the_autocast_of_lightnings_training():
    """Lightning's bf16-mixed forward keeps no cache of cast weights; plain torch.autocast would."""
    from lightning.pytorch import Trainer

    def state(context):
        with context():
            return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_autocast_cache_enabled()

    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False)
    expected = state(trainer.precision_plugin.forward_context)
    assert expected == (True, torch.bfloat16, False)
    assert state(mtcp.bench.bf16_autocast(torch.device("cpu"))) == expected


def test_the_network_is_prepared_as_fit_prepares_it_after_its_flops_are_counted(monkeypatch):
    """``model.compile: true`` compiles the benched network (`MultiTaskModule.configure_model`, as in
    fit), after the FLOP count, which runs the eager network."""
    cli = cli_main([*TINY, "--model.compile=true"], run=False)
    events = []
    monkeypatch.setattr(mtcp.bench, "parameters_and_flops",
                        lambda *a, real=parameters_and_flops: events.append("flops") or real(*a))
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: events.append(f"compile {type(self).__name__}"))
    run(cli.model, torch.device("cpu"), height=40, width=56, batch_size=2, warmup=0, repeats=1, matmul_size=256)
    assert events == ["flops", "compile MTCPNet"]
