"""Every registered task's label survives augmentation and collation the way its label kind says,
and its random labels are valid for its loss and metric (parametrised over the task registry)."""

from __future__ import annotations

import pytest
import torch

from mtcp.data.collate import PadCollate
from mtcp.data.sources.procedural import ProceduralScenes
from mtcp.data.transforms import Augmentation
from mtcp.tasks import TASKS

SOURCE = ProceduralScenes(image_size=(24, 32), train_size=2, val_size=1, test_size=1)
PROVIDED = [name for name in TASKS if name in SOURCE.tasks]


def test_the_procedural_source_labels_every_built_in_task():
    assert set(PROVIDED) == {"semseg", "depth", "normals", "human_parts", "sal", "edge"}


@pytest.mark.parametrize("name", PROVIDED)
def test_a_label_padded_by_augmentation_keeps_its_values_and_fills_with_no_label(name):
    task = TASKS[name]
    sample = SOURCE.dataset("train", [name])[0]
    label = sample[name]
    # no zoom, rotation or flip; a crop larger than the image: the image sits centred in it
    out = Augmentation(scales=(1.0,), flip=False, crop_size=(32, 40))(sample, torch.Generator().manual_seed(0))
    warped = out[name]
    assert warped.dtype == label.dtype and warped.shape[-2:] == (32, 40)
    assert torch.equal(warped[..., 4:28, 4:36], label)  # (32 - 24) / 2 = 4 rows, (40 - 32) / 2 = 4 columns
    border = torch.ones(32, 40, dtype=torch.bool)
    border[4:28, 4:36] = False
    assert (warped[..., border] == task.label.fill).all()


@pytest.mark.parametrize("name", PROVIDED)
def test_collation_pads_each_label_with_its_no_label_value(name):
    task = TASKS[name]
    small = SOURCE.dataset("train", [name])[0]
    big = ProceduralScenes(image_size=(28, 36)).dataset("train", [name])[0]
    batch = PadCollate()([small, big])
    assert batch[name].shape[-2:] == (28, 36) and batch[name].dtype == small[name].dtype
    assert torch.equal(batch[name][0][..., :24, :32], small[name])
    padded = batch[name][0]
    assert (padded[..., 24:, :] == task.label.fill).all() and (padded[..., :, 32:] == task.label.fill).all()
    assert torch.equal(batch[name][1], big[name])


@pytest.mark.parametrize("name", PROVIDED)
def test_random_labels_are_valid_for_the_loss_and_the_metric(name):
    task = TASKS[name]
    channels = task.out_channels(SOURCE.num_classes)
    label = task.label.random(2, 8, 12, channels, torch.Generator().manual_seed(0))
    output = task.activation(torch.randn(2, channels, 8, 12, requires_grad=True))
    loss = task.loss(output, label)
    assert torch.isfinite(loss) and loss.item() > 0
    metric = task.make_metric(channels)
    metric.update(output.detach(), label)
    assert task.headline in metric.compute()
