"""benchmarks/step_memory.py: the peak of each phase of a training step."""

import importlib.util
import sys

import pytest

from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="CPU peaks come from /proc/self/status")
TINY = ["--config", str(ROOT / "configs/procedural.yaml"), "--config", str(ROOT / "configs/model/mtcp_tiny.yaml"),
        "--data.tasks=[semseg,depth]", "--model.net.init_args.backbone.init_args.name=test_convnext",
        "--model.net.init_args.dim=16", "--model.net.init_args.query_heads=2", "--steps=2", "--height=96",
        "--width=128"]


def step_memory():
    spec = importlib.util.spec_from_file_location("step_memory", ROOT / "benchmarks/step_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_forward_memory_follows_the_batch_and_every_phase_is_printed(capsys):
    main = step_memory()
    small, large = main([*TINY, "--batch_size=1"]), main([*TINY, "--batch_size=12"])
    out = capsys.readouterr().out
    assert out.count("step 1: forward ") == 2 and "backward" in out and "optimizer step" in out
    for steps in (small, large):
        for phases in steps:
            assert set(phases) == {"forward", "backward", "optimizer step"}
            assert all(m["total"] > m["bytes"] >= 0 for m in phases.values())
    # the activations kept for backward: twelve images hold far more than one
    assert large[-1]["forward"]["bytes"] > 4 * small[-1]["forward"]["bytes"]
