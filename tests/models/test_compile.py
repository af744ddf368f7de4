"""``model.compile``: the network compiled in place by ``torch.compile`` computes what the eager one does,
keeps its checkpoint keys, and trains through the CLI.

Inductor compiles slowly on a small CPU (about 100 s for the tiny PlainMTL's forward and backward on 2
busy cores), so only the CLI run uses it (marked slow); the equality tests compile with
``backend="aot_eager"`` (Dynamo's graph capture and AOTAutograd's forward/backward split, eager kernels),
and the CLI run checks inductor's numbers against the same eager run's losses."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY_RUN
from mtcp.cli import cli_main
from mtcp.models import MTCPNet, PlainMTL, Predictions, TimmBackbone
from mtcp.module import MultiTaskModule

NYUD = {"semseg": 40, "depth": 1, "normals": 3}
RTOL = 1e-4  # relative, per element; plus an absolute floor of RTOL x the tensor group's largest magnitude


def plain() -> nn.Module:
    torch.manual_seed(0)
    return PlainMTL(NYUD, TimmBackbone("test_convnext"), dim=16)


def mtcp() -> nn.Module:
    torch.manual_seed(0)
    return MTCPNet(NYUD, TimmBackbone("test_convnext"), dim=16, num_queries=4, query_layers=1, query_heads=2,
                   query_ffn_dim=32, decoder_depths=(1, 1, 1))


def _levels(out: Predictions) -> dict[str, torch.Tensor]:
    levels = {"final": out.final, **out.auxiliary}
    return {f"{level}/{task}": y for level, preds in levels.items() for task, y in preds.items()}


def _forward_backward(net: nn.Module, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    outputs = _levels(net(image))
    sum(y.square().mean() for y in outputs.values()).backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return {k: y.detach() for k, y in outputs.items()}, grads


def _assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    scale = max(float(v.abs().max()) for v in expected.values())
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=RTOL, atol=RTOL * scale, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("build", [plain, pytest.param(mtcp, marks=pytest.mark.slow)], ids=["plain", "mtcp"])
def test_compiled_network_matches_eager(build):
    """Outputs at every level and every parameter's gradient, to 1e-4 relative (aot_eager backend)."""
    eager = build().train()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager", fullgraph=False)
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    eager_out, eager_grads = _forward_backward(eager, image)
    compiled_out, compiled_grads = _forward_backward(compiled, image)
    _assert_close(compiled_out, eager_out)
    _assert_close(compiled_grads, eager_grads)
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_compile_option_compiles_in_place_and_keeps_checkpoint_keys():
    eager = MultiTaskModule(NYUD, net=lambda _: plain())
    module = MultiTaskModule(NYUD, net=lambda _: plain(), compile=True)
    assert module.hparams.compile is True
    module.configure_model()
    module.configure_model()  # Lightning may call it again: compiled once, not wrapped
    assert isinstance(module.net, PlainMTL) and module.net._compiled_call_impl is not None
    assert list(module.state_dict()) == list(eager.state_dict())
    eager.load_state_dict(module.state_dict())
    module.load_state_dict(eager.state_dict())
    MultiTaskModule(NYUD, net=lambda _: plain()).configure_model()  # compile=False: nothing happens


def _fit(out: Path, *extra: str):
    cli = cli_main(["fit", *TINY_RUN, *extra, "--trainer.accelerator=cpu",
                    f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
                    f"--checkpoint.dirpath={out / 'checkpoints'}",
                    "--trainer.max_steps=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0"])
    (metrics,) = out.glob("logs/*/metrics.csv")
    return cli, list(csv.DictReader(metrics.open()))


@pytest.mark.slow
def test_cli_fit_with_compile(tmp_path):
    """Two steps with ``--model.compile=true`` (inductor): the same losses as eager to 1e-4 relative (the
    first step checks the forward, the second the gradients and update too), the compile time logged,
    a checkpoint with the eager keys that an eager module loads."""
    eager_cli, eager_rows = _fit(tmp_path / "eager")
    cli, rows = _fit(tmp_path / "compiled", "--model.compile=true")
    assert cli.model.net._compiled_call_impl is not None
    compile_seconds = [float(r["perf/compile_seconds"]) for r in rows if r.get("perf/compile_seconds")]
    assert len(compile_seconds) == 1 and compile_seconds[0] > 0

    def losses(rows):
        return [{k: float(v) for k, v in r.items() if k.startswith("train/loss") and v} for r in rows
                if r.get("train/loss")]

    compiled_losses, eager_losses = losses(rows), losses(eager_rows)
    assert len(compiled_losses) == len(eager_losses) == 2
    for c, e in zip(compiled_losses, eager_losses, strict=True):
        assert c.keys() == e.keys()
        assert all(math.isclose(c[k], e[k], rel_tol=RTOL) for k in e), (c, e)
    state = torch.load(tmp_path / "compiled/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    eager_state = torch.load(tmp_path / "eager/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert list(state["state_dict"]) == list(eager_state["state_dict"])
    MultiTaskModule.load_from_checkpoint(tmp_path / "compiled/checkpoints/last.ckpt", compile=False)


def test_compile_with_bf16_on_the_cpu_is_refused_by_name_before_anything_compiles_or_trains(tmp_path, monkeypatch):
    """Inductor's CPU bf16 code gave MT-CP non-finite gradients at the first step (docs/notes.md): the
    run stops before compiling, with the settings named, and leaves no checkpoint."""
    monkeypatch.setattr(nn.Module, "compile", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match=r"model.compile: true with trainer.precision bf16-mixed on the CPU is "
                                         r"refused: .*non-finite gradients.*32-true"):
        _fit(tmp_path, "--model.compile=true", "--trainer.precision=bf16-mixed")
    assert not list(tmp_path.rglob("*.ckpt"))
