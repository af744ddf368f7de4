"""Delta_m by hand, reference files merged from single-task runs, and its logging by the module."""

from __future__ import annotations

import json

import pytest

from mtcp.metrics.delta_m import delta_m, find_metric, load_single_task_metrics
from mtcp.models import PlainMTL, TimmBackbone
from mtcp.module import MultiTaskModule
from mtcp.tasks import headlines

TASKS = headlines(["semseg", "depth", "normals"])
DEPTH, NORMALS = TASKS[1], TASKS[2]


def test_delta_m_by_hand():
    multi = {"test/semseg/miou": 50.0, "test/depth/rmse": 0.45, "test/normals/mean": 19.0, "test/loss": 3.0}
    single = {"test/semseg/miou": 48.0, "test/depth/rmse": 0.50, "test/normals/mean": 20.0}
    # semseg higher is better: +2/48; depth and normals lower is better: +0.05/0.5, +1/20
    expected = (2 / 48 + 0.05 / 0.50 + 1 / 20) / 3 * 100
    assert delta_m(multi, single, TASKS) == pytest.approx(expected)
    assert expected == pytest.approx(6.3888889)
    worse = {**multi, "test/depth/rmse": 0.55}  # depth now 10% worse
    assert delta_m(worse, single, TASKS) == pytest.approx((2 / 48 - 0.1 + 1 / 20) / 3 * 100)
    assert delta_m(single, single, TASKS) == 0.0
    sal = {"sal/maxf": 80.0, "human_parts/miou": 60.0}
    assert delta_m(sal, {"sal/maxf": 85.0, "human_parts/miou": 50.0},
                   headlines(["sal", "human_parts"])) == pytest.approx((-5 / 85 + 10 / 50) / 2 * 100)


def test_the_authors_saliency_headline_is_a_named_option():
    """Their Delta_m reads saliency's max mIoU; ATRC/InvPT read maxF (the default)."""
    lines = headlines(["sal", "human_parts"], {"sal": {"metric": "max_miou", "higher_is_better": True}})
    multi = {"sal/maxf": 80.0, "sal/max_miou": 66.0, "human_parts/miou": 60.0}
    single = {"sal/maxf": 85.0, "sal/max_miou": 60.0, "human_parts/miou": 50.0}
    assert delta_m(multi, single, lines) == pytest.approx((6 / 60 + 10 / 50) / 2 * 100)  # +15, where maxF gives +7.06
    assert delta_m(multi, single, headlines(["sal", "human_parts"])) == pytest.approx((-5 / 85 + 10 / 50) / 2 * 100)
    with pytest.raises(ValueError, match=r"delta_m_headlines: \['depth'\] not task\(s\) of this model"):
        headlines(["sal"], {"depth": {"metric": "delta1", "higher_is_better": True}})
    with pytest.raises(ValueError, match=r"delta_m_headlines.sal: give exactly metric and higher_is_better"):
        headlines(["sal"], {"sal": {"metric": "max_miou"}})


def test_stage_lookup_prefers_the_same_stage_then_test():
    metrics = {"val/depth/rmse": 1.0, "test/depth/rmse": 2.0}
    assert find_metric(metrics, DEPTH, "val") == 1.0
    assert find_metric(metrics, DEPTH, "test") == 2.0
    assert find_metric({"test/depth/rmse": 2.0}, DEPTH, "val") == 2.0  # NYUD/PASCAL: val = test images
    with pytest.raises(KeyError, match=r"no 'normals' headline metric.*normals/mean"):
        find_metric(metrics, NORMALS, "val")


def test_zero_reference_is_an_error():
    with pytest.raises(ValueError, match=r"reference for 'depth' is 0.0"):
        delta_m({"depth/rmse": 1.0}, {"depth/rmse": 0.0}, [DEPTH])


def test_single_task_files_are_merged_and_checked(tmp_path):
    files = []
    for task, key, value in (("semseg", "miou", 48.0), ("depth", "rmse", 0.5), ("normals", "mean", 20.0)):
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps({f"test/{task}/{key}": value, "test/loss": value + 1}))  # loss differs
        files.append(str(path))
    merged = load_single_task_metrics(files, TASKS)
    assert merged == {"test/semseg/miou": 48.0, "test/depth/rmse": 0.5, "test/normals/mean": 20.0}
    with pytest.raises(ValueError, match=r"no headline metric for task\(s\) \['normals'\]"):
        load_single_task_metrics(files[:2], TASKS)
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"test/depth/rmse": 0.7}))
    with pytest.raises(ValueError, match=r"'test/depth/rmse' differs between single-task files"):
        load_single_task_metrics([*files, str(clash)], TASKS)
    with pytest.raises(FileNotFoundError, match=r"missing.json' does not exist"):
        load_single_task_metrics([str(tmp_path / "missing.json")], TASKS)


def test_module_refuses_incomplete_references_at_construction(tmp_path):
    path = tmp_path / "st.json"
    path.write_text(json.dumps({"test/semseg/miou": 40.0}))
    with pytest.raises(ValueError, match=r"no headline metric for task\(s\) \['depth'\]"):
        MultiTaskModule({"semseg": 4, "depth": 1}, net=lambda c: PlainMTL(c, TimmBackbone("test_convnext"), dim=8),
                        single_task_metrics=[str(path)])
