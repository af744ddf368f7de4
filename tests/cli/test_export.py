"""`mtcp export`: the trained network as ONNX, run under onnxruntime, equal to PyTorch to 1e-4 — the plain
network at any batch and size, MT-CP tiny at any batch and its export size; clear errors otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from conftest import ROOT
from mtcp.cli import cli_main
from mtcp.export import export_onnx, onnx_errors
from mtcp.module import MultiTaskModule

PARITY = 1e-4  # the bar; fp32 graphs agree to ~1e-6


def _run(path, image: torch.Tensor) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image.numpy()})


def _input_dims(path) -> list[str | int]:
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


@pytest.fixture
def checkpoint(tiny_run, tmp_path):
    cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"])
    return tmp_path / "checkpoints" / "last.ckpt"


def test_the_plain_network_exports_with_dynamic_batch_and_size_equal_to_pytorch(tiny_run, tmp_path, checkpoint,
                                                                              capsys):
    output = tmp_path / "exported" / "plain.onnx"
    cli_main(["export", *tiny_run, f"--ckpt_path={checkpoint}", f"--output={output}"])
    printed = capsys.readouterr().out
    assert f"wrote {output}" in printed and "onnxruntime vs PyTorch" in printed
    assert _input_dims(output)[:2] == ["batch", 3] and all(isinstance(d, str) for d in _input_dims(output)[2:])
    model = MultiTaskModule.load_from_checkpoint(checkpoint).eval()
    names = [o.name for o in onnx.load(str(output), load_external_data=False).graph.output]
    assert names == ["semseg", "depth", "normals"]
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 64, 64), (2, 3, 37, 91), (3, 3, 100, 72)]:  # sizes that are no multiple of the stride
        image = torch.rand(shape, generator=gen)
        with torch.no_grad():
            expected = model(image).final
        got = dict(zip(names, _run(output, image), strict=True))
        for task in names:
            assert got[task].shape == tuple(expected[task].shape) and got[task].shape[-2:] == shape[-2:]
            np.testing.assert_allclose(got[task], expected[task].numpy(), rtol=0, atol=PARITY, err_msg=task)
    # the export's own check sees a network that is not the file's: weights changed after the export
    with torch.no_grad():
        next(model.net.heads.parameters()).add_(1.0)
    assert max(onnx_errors(output, model, [torch.rand(1, 3, 64, 64)]).values()) > 1e-2


def test_mtcp_tiny_exports_at_its_size_with_a_dynamic_batch_equal_to_pytorch(tiny_run, tmp_path):
    model = cli_main([*tiny_run, "--config", str(ROOT / "configs/model/mtcp_tiny.yaml"),
                      "--model.net.init_args.backbone.init_args.name=test_convnext",
                      "--model.net.init_args.dim=16"], run=False).model.eval()
    with pytest.raises(ValueError, match="dynamic_size: .*Swin window attention.*fixed size"):
        export_onnx(model, tmp_path / "never.onnx", (64, 64), dynamic_size=True)
    report = export_onnx(model, tmp_path / "mtcp.onnx", (64, 64))
    assert not report.dynamic_size and _input_dims(report.path) == ["batch", 3, 64, 64]
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        image = torch.rand(batch, 3, 64, 64, generator=gen)
        with torch.no_grad():
            expected = model(image).final
        for task, got in zip(report.outputs, _run(report.path, image), strict=True):
            np.testing.assert_allclose(got, expected[task].numpy(), rtol=0, atol=PARITY, err_msg=task)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "export needs --ckpt_path"),
    (["--ckpt_path=missing.ckpt"], "ckpt_path='missing.ckpt' is not a file"),
])
def test_export_without_a_checkpoint_is_refused(tiny_run, extra, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        cli_main(["export", *tiny_run, *extra])


def test_a_height_without_a_width_is_refused(tiny_run):
    with pytest.raises(ValueError, match="--height and --width are two positive sizes given together"):
        cli_main(["export", *tiny_run, "--ckpt_path=any.ckpt", "--height=64"])
