"""Smoke test of bench/methods.py: two methods, one epoch, a 2-class tiny synthetic set."""
from __future__ import annotations

import json

import pytest
import torch
from bench_loader import load_bench

from dtkd.config import validate_config


def _bench():
    return load_bench("methods")


def _tiny_config():
    train = dict(epochs=1, batch_size=4, optimizer="adamw", lr=0.003, scheduler="cosine", warmup_epochs=0)
    ref = dict(frames=4, sampling_rate=2, crop_size=32)
    return validate_config({
        "data": {"dataset": "synthetic", "root": "unused",
                 "synthetic": {"num_classes": 2, "clips_per_class": {"train": 4, "test": 2}, "frames": 8,
                               "size": 32, "fps": 8, "seed": 0}},
        "models": {"student": {"name": "x3d_tiny", **ref}, "cnn_teacher": {"name": "x3d_tiny_m", **ref},
                   "vit_teacher": {"name": "mvit_tiny", **ref}},
        "teacher_training": train, "distill_training": train,
        "distill": {"method": "dtkd", "prepare_max_batches": 1},
        "evaluation": {"num_clips": 1, "batch_size": 4},
    })


def test_ablation_list_covers_every_variant_once():
    bench = _bench()
    from dtkd.distill import DistillConfig

    names = [n for n, _ in bench.ablation_variants(DistillConfig())]
    # Table 5 with the SDB off, as the paper runs it; Table 6's SDB variants; each other term off.
    assert names == ["dtkd weighting=uniform sd=off", "dtkd weighting=confidence sd=off",
                     "dtkd weighting=discrepancy sd=off", "dtkd weighting=datw sd=off",
                     "dtkd sdb=nl", "dtkd sdb=se", "dtkd use_sr=off", "dtkd use_rkd=off"]
    table5 = [DistillConfig.model_validate(d) for n, d in bench.runs_to_do(DistillConfig(), [], ablations=True)
              if n.startswith("dtkd weighting=")]
    assert len(table5) == 4 and not any(c.use_sd for c in table5)
    for _, data in bench.runs_to_do(DistillConfig(), ["kd"], ablations=True):
        DistillConfig.model_validate(data)  # every row is a valid config


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:phi_CNN fitted")
def test_short_run_two_methods_and_a_bad_one(tmp_path, capsys):
    bench = _bench()
    report = bench.run_methods(_tiny_config(), methods=["none", "dtkd", "no_such_method"], data_root=tmp_path,
                               device="cpu")
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"none", "dtkd", "no_such_method"}
    for m in ("none", "dtkd"):
        assert rows[m]["error"] is None, rows[m].get("traceback")
        assert 0.0 <= rows[m]["top1"] <= 1.0 and rows[m]["n_test"] == 4
        assert not rows[m]["nonfinite_terms"]
    assert set(rows["dtkd"]["final_train"]) >= {"train_loss/ce", "train_loss/sr", "train_loss/sd", "train_loss/rkd"}
    assert "unknown distillation method" in rows["no_such_method"]["error"]  # reported, did not stop the rest
    assert set(report["teachers"]) == {"vit", "cnn"}
    assert list((tmp_path / "teachers").glob("*.pt")), "teachers are cached under the data root"

    # A second run reuses the cached teachers; the report's last line is the JSON summary.
    report2 = bench.run_methods(_tiny_config(), methods=["none"], data_root=tmp_path, device="cpu")
    assert all(t["cached"] for t in report2["teachers"].values())
    assert report2["rows"][0]["top1"] == rows["none"]["top1"]  # same seed, same student
    print(bench.markdown(report))
    print(json.dumps(bench.summary(report)))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == {"none": round(100 * rows["none"]["top1"], 2),
                                "dtkd": round(100 * rows["dtkd"]["top1"], 2), "no_such_method": None}


def test_data_dirs_follow_the_generator_knobs(tmp_path):
    bench = _bench()
    cfg = _tiny_config()
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "synthetic": cfg.data.synthetic.model_copy(update={"difficulty": "easy"})})})
    a, b = bench.bench_data_config(cfg, tmp_path), bench.bench_data_config(other, tmp_path)
    assert a.data.root.parent == tmp_path and a.data.root != b.data.root
    assert bench.bench_data_config(cfg, tmp_path).data.root == a.data.root  # stable


@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore:phi_CNN fitted")
def test_a_cell_run_twice_gives_the_same_numbers_exactly(tmp_path):
    # A run's numbers depend only on its config, seed and thread count (recorded with the CPU model).
    bench = _bench()
    runs = [bench.run_methods(_tiny_config(), methods=["dtkd"], data_root=tmp_path, device="cpu")
            for _ in range(2)]
    a, b = (r["rows"][0] for r in runs)
    assert a["error"] is None, a.get("traceback")
    for key in ("top1", "top5", "test_loss", "train_history", "val_top1_history", "per_class"):
        assert a[key] == b[key], key
    assert runs[0]["teachers"]["cnn"]["top1"] == runs[1]["teachers"]["cnn"]["top1"]
    setup = runs[0]["setup"]
    assert setup["torch_threads"] == torch.get_num_threads() and setup["cpu"]
