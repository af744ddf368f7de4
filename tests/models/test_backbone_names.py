"""Backbone names as users write them: pretrained tags and hf-hub: names build offline without the hub."""

from __future__ import annotations

import re

import huggingface_hub
import pytest
import timm
import torch

from mtcp.models.backbone import TimmBackbone, weights_from_checkpoint


@pytest.fixture
def no_hub(monkeypatch):
    """Any download from the Hugging Face hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"reached for the hub: {args} {kwargs}")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
        monkeypatch.setattr(f"timm.models._hub.{name}", refuse, raising=False)


@pytest.mark.parametrize("name", ["resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k"])
def test_tags_and_timm_hub_names_build_offline_with_the_untagged_layout(name, no_hub):
    plain = TimmBackbone("resnet18")
    named = TimmBackbone(name)
    assert named.body.pretrained_cfg["tag"] == "a1_in1k"
    assert list(named.state_dict()) == list(plain.state_dict())  # checkpoints of either name load into both
    assert [f.shape for f in named(torch.rand(1, 3, 64, 64))] == [f.shape for f in plain(torch.rand(1, 3, 64, 64))]


def test_a_hub_name_rebuilt_from_a_checkpoint_never_fetches(no_hub):
    with weights_from_checkpoint():  # pretrained: true, but every weight comes from the checkpoint
        backbone = TimmBackbone("hf-hub:timm/resnet18.a1_in1k", pretrained=True)
    assert backbone.body.pretrained_cfg["tag"] == "a1_in1k"


def test_names_that_cannot_be_built_offline_are_named():
    with pytest.raises(ValueError, match=r"backbone.init_args.name='hf-hub:someone/net'.*only timm's own hub repos"):
        TimmBackbone("hf-hub:someone/net")
    with pytest.raises(ValueError, match=r"backbone.init_args.name='resnet_18' is not a timm model"):
        TimmBackbone("resnet_18")


def test_unknown_names_and_tags_list_what_timm_has():
    with pytest.raises(ValueError, match=r"'resnet_18' is not a timm model .*close matches: \[.*'resnet18'"):
        TimmBackbone("resnet_18")
    with pytest.raises(ValueError, match=r"'hf-hub:timm/swin_smal_patch4_window7_224.ms_in1k' is not a timm model "
                                         r".*close matches: \['swin_small_patch4_window7_224'"):
        TimmBackbone("hf-hub:timm/swin_smal_patch4_window7_224.ms_in1k")
    with pytest.raises(ValueError, match=r"no pretrained tag 'ms_in1K' for 'test_convnext'; its tags: \['r160_in1k'\]"):
        TimmBackbone("test_convnext.ms_in1K")


@pytest.mark.parametrize("name", ["test_convnext.r160_in1k", "hf-hub:timm/test_convnext.r160_in1k"])
def test_a_local_checkpoint_path_with_a_tagged_or_hub_name_never_fetches(name, tmp_path, no_hub):
    weights = timm.create_model("test_convnext").state_dict()  # a file of timm's layout, as checkpoint_path takes
    weights = {key: torch.randn_like(value) if value.is_floating_point() else value for key, value in weights.items()}
    torch.save(weights, tmp_path / "weights.pth")
    loaded = TimmBackbone(name, checkpoint_path=str(tmp_path / "weights.pth")).body.state_dict()
    # features_only renames the top modules (stem.0 -> stem_0); every weight but the classifier's is the file's
    body = {key: value for key, value in weights.items() if not key.startswith("head.")}
    assert len(body) == len(loaded)
    for key, value in body.items():
        assert torch.equal(loaded[re.sub(r"^(stem|stages)\.(\d+)", r"\1_\2", key)], value), key
