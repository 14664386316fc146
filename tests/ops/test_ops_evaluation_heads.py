"""The gate's scoring of a multi-head model: which clips count as right follows GateConfig.metric
(a head or the action), every head's and the action's figures are reported."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from dtkd.data.heads import HeadLayout
from dtkd_ops.evaluation import DataMismatch, score_clips
from dtkd_ops.gate import GateConfig

L = HeadLayout.of({"verb": 2, "noun": 3})


class Fixed(nn.Module):
    """Returns row i of ``table`` for a clip whose pixels are all i."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.table[x.flatten(1)[:, 0].long()] + self.w


def _rows(verbs, nouns):
    codes = L.encode({"verb": verbs, "noun": nouns})
    return pd.DataFrame({"video_id": [f"n{i}" for i in range(len(codes))], "label": "x", "label_idx": codes,
                         "split": "test", "label_verb": verbs, "label_noun": nouns, "heads": "verb:2,noun:3",
                         "sha256": [f"{i:064x}" for i in range(len(codes))]})


def _loader(rows):
    x = torch.arange(len(rows), dtype=torch.float32)[:, None, None, None, None].expand(-1, 1, 1, 1, 1)
    return [{"inputs": {"student": x}, "label": torch.as_tensor(rows["label_idx"].to_numpy()),
             "index": torch.arange(len(rows))}]


def test_clips_are_scored_on_the_configured_metric():
    #          verb logits   noun logits          predicted (verb, noun)
    table = torch.tensor([[3., 0., 3., 0., 0.],   # (0, 0)
                          [3., 0., 0., 3., 0.],   # (0, 1)
                          [0., 3., 0., 0., 3.],   # (1, 2)
                          [0., 3., 3., 0., 0.]])  # (1, 0)
    rows = _rows([0, 0, 0, 1], [0, 0, 2, 2])      # right: verb 1,1,0,1; noun 1,0,1,0; action 1,0,0,0
    model = Fixed(table)
    got = {}
    for metric in (None, "verb", "noun", "action"):
        scores, result = score_clips(model, _loader(rows), rows, num_classes=6, metric=metric)
        got[metric] = scores.correct
    assert got[None] == got["action"] == (True, False, False, False)
    assert got["verb"] == (True, True, False, True) and got["noun"] == (True, False, True, False)
    assert result.top1 == 0.25 and result.heads["verb_top1"] == 0.75 and result.heads["noun_top1"] == 0.5
    assert scores.extra["action_top1"] == 0.25 and scores.extra["verb_top5"] == 1.0
    assert result.confusion.tolist() == [[2, 1], [0, 1]]  # the verb head's
    with pytest.raises(DataMismatch, match="choices are \\['verb', 'noun', 'action'\\]"):
        score_clips(model, _loader(rows), rows, num_classes=6, metric="object")
    with pytest.raises(DataMismatch, match="has 4 outputs.*need 5"):
        score_clips(Fixed(table[:, :4]), _loader(rows), rows, num_classes=6)


def test_single_label_models_refuse_a_head_metric():
    rows = pd.DataFrame({"video_id": ["a", "b"], "label": ["x", "y"], "label_idx": [0, 1], "split": "test",
                         "sha256": ["0" * 64, "1" * 64]})
    model = Fixed(torch.tensor([[1., 0.], [0., 1.]]))
    scores, _ = score_clips(model, _loader(rows), rows, num_classes=2)
    assert scores.correct == (True, True)
    with pytest.raises(DataMismatch, match="needs a multi-head model"):
        score_clips(model, _loader(rows), rows, num_classes=2, metric="verb")
    assert GateConfig().metric is None and GateConfig(metric="noun").metric == "noun"


@pytest.mark.parametrize("source", ["frames", "video"])
def test_quality_gate_probes_segments_not_whole_sources(tmp_path, source):
    """Frame-folder segments are decoded (not opened as videos); segments of one video are not
    duplicates of each other; (video) a segment past its video's end is quarantined, alone."""
    import csv

    from dtkd.data import DataConfig, build_manifest
    from dtkd.data.epic import write_epic_fixture
    from dtkd_ops.quality import rules_for, run_quality_gate

    root = write_epic_fixture(tmp_path / "epic", participants=("P01", "P02"), segments_per_video=3, segment_frames=6,
                              size=16, source=source)
    rules = rules_for(DataConfig(dataset="epic_kitchens100", quality={"min_videos_per_class": 0,
                                                                      "max_class_imbalance": 10}), min_frames=4)
    manifest = build_manifest("epic_kitchens100", root, on_error="flag")
    assert set(manifest["source"]) == {source}
    report = run_quality_gate(manifest, rules)
    assert report.success and len(report.quarantined) == 0, report.summary()
    assert report.stats["frames"].tolist() == [6] * len(manifest)
    if source == "frames":
        return
    train = root / "annotations" / "EPIC_100_train.csv"
    rows = list(csv.DictReader(open(train)))
    rows[0]["stop_frame"] = "500"
    with open(train, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = run_quality_gate(build_manifest("epic_kitchens100", root, on_error="flag"), rules)
    assert report.quarantined["video_id"].tolist() == [rows[0]["narration_id"]]
    assert "ends at frame 500" in report.quarantined["reason"].iloc[0]


def test_gate_tags_record_each_heads_classes_not_the_actions_present():
    import json

    from dtkd.config import EvalConfig
    from dtkd_ops.evaluation import TAG_CLASSES, gate_tags

    rows = _rows([0, 1], [2, 2]).assign(label=["v0/n2", "v1/n2"])
    assert json.loads(gate_tags(rows, EvalConfig())[TAG_CLASSES]) == ["verb:v0", "verb:v1", "noun:0", "noun:1", "noun:n2"]
