"""The authors' encoder: Hugging Face's Mask2Former inside MT-CP (random weights from a config, no download)."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from mtcp.cli import cli_main
from mtcp.models import Mask2FormerEncoder, MTCPNet, TimmBackbone
from mtcp.models.backbone import weights_from_checkpoint

transformers = pytest.importorskip("transformers")

#: a Mask2Former small enough for a test: Swin of width 16, 2 deformable layers, 3 decoder layers
TINY = dict(
    backbone_config=dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                         out_features=["stage1", "stage2", "stage3", "stage4"]),
    feature_size=32, mask_feature_size=32, hidden_dim=32, num_queries=8, decoder_layers=4, encoder_layers=2,
    encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2, num_labels=1,
)
TASKS = {"semseg": 5, "depth": 1, "normals": 3}


def test_the_encoder_gives_p_the_queries_the_mask_logits_and_the_levels():
    encoder = Mask2FormerEncoder(config=TINY)
    out = encoder(torch.rand(2, 3, 64, 96))
    assert out.pixels.shape == (2, 32, 16, 24)
    assert out.queries.shape == (2, 8, 32) and out.mask_logits.shape == (2, 8, 16, 24)
    assert [tuple(level.shape[-2:]) for level in out.levels] == [(2, 3), (4, 6), (8, 12)]  # strides 32, 16, 8
    # the mask logits are the last decoder layer's: Mask2FormerModel's own, for the ImageNet-normalised input
    encoder.eval()  # (no dropout)
    image = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    reference = encoder.model((image - mean[:, None, None]) / std[:, None, None], output_hidden_states=True)
    assert torch.equal(encoder(image).mask_logits, reference.masks_queries_logits[-1])
    # the queries are the last layer's after the decoder's LayerNorm (what a class head would read)
    layer_norm = encoder.model.transformer_module.decoder.layernorm
    last = reference.transformer_decoder_last_hidden_state
    torch.testing.assert_close(encoder(image).queries, layer_norm(last))


@pytest.mark.parametrize("use_query_decoder", [True, False])
def test_mtcp_with_the_encoder_trains_every_parameter(use_query_decoder):
    encoder = Mask2FormerEncoder(config=TINY, use_queries=use_query_decoder)
    net = MTCPNet(TASKS, encoder=encoder, dim=32, use_query_decoder=use_query_decoder, decoder_heads=2)
    net.train()
    out = net(torch.rand(2, 3, 50, 70))  # not a multiple of 32: padded, then cropped back
    assert out.final["normals"].shape == (2, 3, 50, 70)
    loss = sum(y.float().pow(2).mean() for y in out.final.values())
    loss = loss + sum(y.float().pow(2).mean() for level in out.auxiliary.values() for y in level.values())
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing[:10]
    assert net.backbone is None and net.pixel_decoder is None and net.query_decoder is None


def test_the_reference_fusion_reads_the_encoders_p_and_mask_logits():
    """R = einsum("bnhw,bdhw->bdhw", mask logits, P), the authors' fusion, from what the encoder gave."""
    net = MTCPNet(TASKS, encoder=Mask2FormerEncoder(config=TINY), dim=32, fusion="reference").eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = net.forward_features(image)
        encoded = net.encoder(image)
    assert torch.equal(feats.pixels, encoded.pixels) and torch.equal(feats.mask_logits, encoded.mask_logits)
    torch.testing.assert_close(feats.shared, torch.einsum("bnhw,bdhw->bdhw", encoded.mask_logits, encoded.pixels))


def test_settings_that_belong_to_the_encoder_are_refused():
    encoder = Mask2FormerEncoder(config=TINY)
    with pytest.raises(ValueError, match=r"\['backbone', 'num_queries'\] belong to the encoder"):
        MTCPNet(TASKS, backbone=TimmBackbone("test_convnext"), encoder=encoder, dim=32, num_queries=4)
    with pytest.raises(ValueError, match=r"model.net.init_args.dim=64 must equal the encoder's width .* 32"):
        MTCPNet(TASKS, encoder=encoder, dim=64)
    with pytest.raises(ValueError, match=r"use_query_decoder=False but the encoder's use_queries=True"):
        MTCPNet(TASKS, encoder=encoder, dim=32, use_query_decoder=False)


def test_weights_from_a_local_save_pretrained_directory_offline(tmp_path):
    source = transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(**TINY))
    source.save_pretrained(tmp_path / "m2f")
    loaded = Mask2FormerEncoder(weights=str(tmp_path / "m2f"))
    expected = source.model.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(expected) - {"pixel_level_module.encoder.swin.layernorm.weight",
                                        "pixel_level_module.encoder.swin.layernorm.bias"}
    assert all(torch.equal(got[k], expected[k]) for k in got)
    with pytest.raises(FileNotFoundError, match=r"has no config.json; expected a directory written by"):
        Mask2FormerEncoder(weights=str(tmp_path))
    # rebuilt for a checkpoint: the architecture from the directory, the weights not read
    with weights_from_checkpoint():
        rebuilt = Mask2FormerEncoder(weights=str(tmp_path / "m2f"))
    assert rebuilt.model.config.num_queries == TINY["num_queries"]
    assert not torch.equal(rebuilt.model.state_dict()["transformer_module.queries_features.weight"],
                           expected["transformer_module.queries_features.weight"])


def test_rebuilding_from_a_checkpoint_never_reaches_for_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with weights_from_checkpoint(), pytest.raises(FileNotFoundError, match=r"checkpoints never reach for the hub"):
        Mask2FormerEncoder(weights="facebook/mask2former-swin-small-ade-semantic-not-in-any-cache")


def test_the_paper_sized_encoder_has_the_authors_parameter_count():
    """The authors' Mask2Former Swin-S (ADE20K, 150 classes) has 68,757,537 trained parameters with its 151-way
    class head (Linear 256 -> 151: 38,807). MT-CP never reads the class head, so it is not built here, and
    neither is the Swin's final LayerNorm whose output Mask2Former never reads (1,536; untrained in theirs)."""
    encoder = Mask2FormerEncoder(config=dict(num_labels=150))
    assert sum(p.numel() for p in encoder.parameters()) == 68_757_537 - (256 * 151 + 151)


def test_the_tiny_encoder_config_trains_through_the_cli(tmp_path):
    args = ["--config", str(ROOT / "configs/procedural.yaml"), "--config", str(ROOT / "configs/trainer/debug.yaml"),
            "--config", str(ROOT / "configs/model/mtcp_mask2former_tiny.yaml"),
            "--data.source.init_args.image_size=[64,64]", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path / 'checkpoints'}", "--trainer.fast_dev_run=true"]
    cli = cli_main(["fit", *args])
    assert isinstance(cli.model.net.encoder, Mask2FormerEncoder)
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_checkpointing_what_an_encoder_replaces_is_refused_by_name_and_left_out_of_true():
    refused = r"model.net.checkpointing: \['backbone'\] not built in this network \(an encoder"
    with pytest.raises(ValueError, match=refused):
        MTCPNet(TASKS, encoder=Mask2FormerEncoder(config=TINY), dim=32, checkpointing=["backbone", "cfm"])
    net = MTCPNet(TASKS, encoder=Mask2FormerEncoder(config=TINY), dim=32, checkpointing=True)
    assert net.checkpointing == {"task_decoders", "cfm", "trace_back", "heads"}
