"""Every config under configs/ is used by a documented recipe, and every documented recipe parses and
builds with the real CLI (sweeps: tests/test_sweeps.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT
from fixtures.nyud import build_nyud
from fixtures.pascal import build_pascal
from mtcp.cli import cli_main
from mtcp.models.backbone import weights_from_checkpoint

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not {"sweeps", "studies"} & set(p.parts))
SUBCOMMANDS = ("fit", "validate", "test", "predict", "bench", "check-data", "export")


def recipes() -> list[tuple[str, str]]:
    """(where, command) of every `mtcp <subcommand> ...` line in the README's code blocks and config comments."""
    found = []
    sources = [ROOT / "README.md", *CONFIGS]
    for path in sources:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].lstrip("#").strip().strip("`")
            m = re.match(rf"mtcp\s+({'|'.join(SUBCOMMANDS)})\b.*", line)
            if m:
                cmd = m.group(0).split("#")[0].strip().split("`")[0]
                while cmd.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd[:-1] + " " + lines[i].lstrip("#").strip()
                found.append((f"{path.relative_to(ROOT)}:{i + 1}", cmd))
            i += 1
    return found


RECIPES = recipes()


def to_args(command: str, tmp_path: Path) -> list[str]:
    """The recipe's arguments (subcommand first), runnable here: optional `[--...]` parts and `...`
    dropped, paths made absolute, dataset roots pointed at fixtures, a CPU trainer."""
    command = re.sub(r"\s\[--[^\]]*\]", "", command)
    tokens = [t for t in shlex.split(command)[1:] if t != "..."]
    args, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("--data.root", "--ckpt_path"):
            i += 1  # the value goes too; roots are replaced below, checkpoints are not needed to parse
        elif tok.startswith(("--data.root=", "--ckpt_path=")):
            pass
        elif tok.startswith("configs/"):
            args.append(str(ROOT / tok))
        else:
            args.append(tok)
        i += 1
    lowered = command.lower()
    if "nyud" in lowered:
        build_nyud(tmp_path / "nyud")
        args.append(f"--data.root={tmp_path / 'nyud'}")
    elif "pascal" in lowered:
        build_pascal(tmp_path / "pascal")
        args.append(f"--data.root={tmp_path / 'pascal'}")
    return args + ["--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
                   f"--checkpoint.dirpath={tmp_path / 'ckpt'}"]


def test_recipes_are_found_and_every_config_is_in_one():
    assert len(RECIPES) >= 10
    used = " ".join(cmd for _, cmd in RECIPES)
    missing = [str(p.relative_to(ROOT)) for p in CONFIGS if str(p.relative_to(ROOT)) not in used]
    assert not missing, f"configs no documented recipe uses: {missing}"


@pytest.mark.parametrize("where,command", RECIPES, ids=[w for w, _ in RECIPES])
def test_documented_recipe_parses(where, command, tmp_path, monkeypatch, capsys):
    """The real CLI parses the recipe, subcommand included (``--print_config`` stops after parsing)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli_main([*to_args(command, tmp_path), "--print_config"])
    assert stop.value.code in (0, None), f"{where}: {command}\n{capsys.readouterr().err[-2000:]}"
    assert "trainer:" in capsys.readouterr().out


PAPER = ["configs/trainer/paper.yaml", "configs/model/mtcp_swin_s.yaml"]
#: what a preset is stacked over when it is not a whole config itself (default: the embedded default)
STACKED_OVER = {
    "configs/data/nyud.yaml": PAPER, "configs/data/pascal.yaml": PAPER,
    "configs/data/augment_wide_nyud.yaml": ["configs/nyud.yaml"],
    "configs/data/augment_wide_pascal.yaml": ["configs/pascal.yaml"],
    "configs/model/checkpointing.yaml": ["configs/procedural.yaml", "configs/model/mtcp_tiny.yaml"],
    "configs/model/recompute_attention.yaml": ["configs/procedural.yaml", "configs/model/mtcp_tiny.yaml",
                                               "configs/model/checkpointing.yaml"],
    "configs/model/attention_fp32.yaml": ["configs/procedural.yaml", "configs/model/mtcp_tiny.yaml",
                                          "configs/trainer/bf16.yaml"],
}
#: presets for one subcommand other than fit, which `run=False` cannot build (their recipes are parsed)
NOT_FOR_FIT = {"configs/predict.yaml"}
BUILDS = [p for p in CONFIGS if str(p.relative_to(ROOT)) not in NOT_FOR_FIT]


@pytest.mark.parametrize("path", BUILDS, ids=[str(p.relative_to(ROOT)) for p in BUILDS])
def test_every_config_file_builds(path, tmp_path, monkeypatch):
    """Each file, stacked over what it is made for, instantiates model, data and trainer."""
    monkeypatch.chdir(tmp_path)
    name = str(path.relative_to(ROOT))
    whole = "__base__" in path.read_text() or name == "configs/procedural.yaml"
    below = [] if whole else STACKED_OVER.get(name, ["configs/procedural.yaml"])
    args = [a for f in [*below, name] for a in ("--config", str(ROOT / f))]
    stack_text = " ".join([name, *below])
    for dataset, build in (("nyud", build_nyud), ("pascal", build_pascal)):
        if (f"/{dataset}.yaml" in stack_text or f"/{dataset}_" in stack_text
                or f"_{dataset}.yaml" in stack_text and "balancer" not in name):
            build(tmp_path / dataset)
            args.append(f"--data.root={tmp_path / dataset}")
    args += random_encoder_weights(stack_text)
    with weights_from_checkpoint():  # no downloads: only the construction is checked
        cli = cli_main([*args, "--trainer.accelerator=cpu", f"--checkpoint.dirpath={tmp_path / 'ckpt'}"], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None


def random_encoder_weights(stack_text: str) -> list[str]:
    """For a stack using the authors' hub encoder: random weights (offline; the architecture is the same)."""
    files = [f for name in stack_text.split() for f in (name, *base_files(ROOT / name))]
    uses_hub = any("mask2former-swin" in (ROOT / f).read_text() for f in files)
    return ["--config", str(ROOT / "tests/fixtures/random_encoder.yaml")] if uses_hub else []


def base_files(path: Path) -> list[str]:
    """The configs a file stacks with ``__base__`` (relative to the project root)."""
    import yaml
    bases = (yaml.safe_load(path.read_text()) or {}).get("__base__") or []
    return [str((path.parent / b).relative_to(ROOT)) for b in bases]


def _resolved(args: list[str]) -> dict:
    with weights_from_checkpoint():
        cli = cli_main(args, run=False)
    cfg = cli.config.clone()
    for key in ("config", "data.root", "data.source.init_args.root", "trainer.default_root_dir",
                "checkpoint.dirpath", "last_checkpoint.dirpath", "model.net.init_args.backbone.init_args.pretrained"):
        if key in cfg:
            cfg.pop(key)
    return cfg.as_dict()


@pytest.mark.parametrize("name,builder", [("nyud", build_nyud), ("pascal", build_pascal)])
def test_entry_point_is_the_stack_of_presets(name, builder, tmp_path):
    """configs/<dataset>.yaml is exactly trainer/paper + model/mtcp_swin_s + data/<dataset>."""
    builder(tmp_path)
    root = [f"--data.root={tmp_path}"]
    entry = _resolved(["--config", str(ROOT / f"configs/{name}.yaml"), *root])
    stack = _resolved(["--config", str(ROOT / "configs/trainer/paper.yaml"),
                       "--config", str(ROOT / "configs/model/mtcp_swin_s.yaml"),
                       "--config", str(ROOT / f"configs/data/{name}.yaml"), *root])
    assert entry == stack


def test_base_presets_expand_in_order_and_bad_bases_are_named(tmp_path):
    from mtcp.cli import config_stack, expand_config_bases

    (tmp_path / "a.yaml").write_text("seed_everything: 1\n")
    (tmp_path / "b.yaml").write_text("__base__: [a.yaml]\nseed_everything: 2\n")
    (tmp_path / "c.yaml").write_text("__base__: [b.yaml]\n")
    assert config_stack(tmp_path / "c.yaml") == [tmp_path / n for n in ("a.yaml", "b.yaml", "c.yaml")]
    assert expand_config_bases(["fit", "--config", str(tmp_path / "b.yaml"), "--x=1"]) == [
        "fit", f"--config={tmp_path / 'a.yaml'}", f"--config={tmp_path / 'b.yaml'}", "--x=1"]
    (tmp_path / "loop.yaml").write_text("__base__: [loop.yaml]\n")
    with pytest.raises(ValueError, match=r"__base__ in .*loop.yaml.*include each other"):
        config_stack(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("__base__: [nowhere.yaml]\n")
    with pytest.raises(FileNotFoundError, match=r"names 'nowhere.yaml'"):
        config_stack(tmp_path / "missing.yaml")
    # the later file wins, as with --config stacking
    cli = cli_main(["--config", str(ROOT / "configs/procedural.yaml"), "--config", str(tmp_path / "b.yaml")],
                   run=False)
    assert cli.config["seed_everything"] == 2


def test_bench_is_listed_and_runs_from_the_command_line(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert re.search(r"^\s+bench\s+Throughput, peak memory", capsys.readouterr().out, re.M)
    cli_main(["bench", "--config", str(ROOT / "configs/procedural.yaml"), "--config",
              str(ROOT / "configs/model/mtcp_tiny.yaml"), "--model.net.init_args.backbone.init_args.name=test_convnext",
              "--model.net.init_args.dim=16", "--model.net.init_args.query_heads=2", "--height=40", "--width=56",
              "--batch_size=2", "--warmup=0", "--repeats=1"])
    out = capsys.readouterr().out
    assert re.search(r"^MTCPNet \| tasks \{'semseg': 11, 'depth': 1, 'normals': 3\} \| input 2x3x40x56", out, re.M)
    assert re.search(r"^training: +\d+\.\d+ images/s", out, re.M)
