"""Backbone names as users write them: pretrained tags and hf-hub: names build offline without the hub."""

from __future__ import annotations

import huggingface_hub
import pytest
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
