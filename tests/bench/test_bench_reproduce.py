"""bench/reproduce.py: the paired statistics (hand-computed values), the cell key, a tiny study's
last line, resuming from the cache, and a cell's exact reproducibility."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml
from bench_loader import load_bench

from dtkd.config import validate_config

reproduce = load_bench("reproduce")  # puts the repository on sys.path: bench.study imports below

from bench.study import stats  # noqa: E402
from bench.study.cells import Row, cell_key  # noqa: E402
from bench.study.tables import BASELINE_BASE, BASELINES, KD_TAU, QUICK_ROWS, TABLES, study_tables, table5, table6, table7  # noqa: E402
from dtkd.distill import DistillConfig  # noqa: E402

HEADLINE_KEYS = {"ce", "dtkd", "best_baseline", "best_baseline_name", "delta_ce_ci", "delta_best_ci", "teachers", "seeds"}


def _tiny(data_root: str = "unused") -> dict:
    """2 classes, 4 train / 2 val / 2 test clips each, 4-frame clips; a 2-class pretraining corpus."""
    synth = dict(frames=8, size=32, fps=8, seed=0)
    ref = dict(frames=4, sampling_rate=2, crop_size=32)
    return {
        "data": {"dataset": "synthetic", "root": data_root,
                 "synthetic": {"num_classes": 2, "clips_per_class": {"train": 4, "val": 2, "test": 2}, **synth}},
        "models": {"student": {"name": "x3d_tiny", **ref}, "cnn_teacher": {"name": "x3d_tiny_m", **ref},
                   "vit_teacher": {"name": "mvit_tiny", **ref}},
        "training": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.003, "scheduler": "cosine",
                     "warmup_epochs": 0},
        "distill": {"method": "dtkd", "prepare_max_batches": 1},
        "evaluation": {"num_clips": 1, "batch_size": 4},
        "pretraining": {"roles": ["cnn", "vit"], "data": {"dataset": "synthetic", "root": "unused", "synthetic": {
            "vocabulary": "pretrain", "num_classes": 2, "clips_per_class": {"train": 4, "test": 2}, **synth}}},
    }


# ----------------------------------------------------------------------------- statistics
def test_mean_std_by_hand():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std: sqrt((1 + 0 + 1) / 2)
    assert stats.mean_std([0.5]) == (0.5, None)
    assert stats.mean_std([]) == (None, None)


def test_bootstrap_interval_by_hand():
    # Two seeds: a resample's mean is 0 (p 1/4), 0.5 (1/2) or 1 (1/4); both tails hold > 2.5%.
    assert stats.bootstrap_mean_ci([0.0, 1.0]) == (0.0, 1.0)
    # Three seeds: the all-lowest and all-highest resamples each have p 1/27 = 3.7% > 2.5%.
    lo, hi = stats.bootstrap_mean_ci([0.1, 0.2, 0.3])
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.3)
    assert stats.bootstrap_mean_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)
    assert stats.bootstrap_mean_ci([0.3]) is None  # one seed: no interval
    assert stats.bootstrap_mean_ci([0.1, 0.5, 0.2, 0.9]) == stats.bootstrap_mean_ci([0.1, 0.5, 0.2, 0.9])  # fixed RNG


def test_paired_comparison_by_hand():
    a = {0: 0.6, 1: 0.7, 2: 0.9, 3: 0.5}
    b = {0: 0.5, 1: 0.5, 2: 0.6}  # seed 3 failed in b: left out of the pairs
    cmp = stats.compare(a, b)
    assert cmp["seeds"] == [0, 1, 2]
    assert cmp["diffs"] == pytest.approx([0.1, 0.2, 0.3])
    assert cmp["mean"] == pytest.approx(0.2) and cmp["std"] == pytest.approx(0.1)
    assert cmp["ci"] == pytest.approx([0.1, 0.3]) and cmp["within_noise"] is False
    noisy = stats.compare({0: 0.4, 1: 0.6}, {0: 0.5, 1: 0.5})  # diffs -0.1, +0.1: interval [-0.1, 0.1]
    assert noisy["ci"] == pytest.approx([-0.1, 0.1]) and noisy["within_noise"] is True
    single = stats.compare({0: 0.4}, {0: 0.5})
    assert single["ci"] is None and single["within_noise"] is None


# ---------------------------------------------------------------------------------- rows
def test_tables_rows():
    base = DistillConfig()
    t5 = [DistillConfig.model_validate({**base.model_dump(), **r.update}) for r in table5(base)]
    assert [c.weighting for c in t5] == ["uniform", "confidence", "discrepancy", "datw"] and not any(c.use_sd for c in t5)
    t6 = table6(base)
    assert [r.name for r in t6] == ["dtkd sdb=none (L_SD off)", "dtkd sdb=se", "dtkd sdb=nl", "dtkd sdb=nl+se"]
    assert t6[-1].update == {"method": "dtkd"}  # the base's SDB is the dtkd row itself
    t7 = table7(base, ["vit", "cnn", "vit2", "cnn2"])
    assert [r.teachers for r in t7] == [(("vit", "vit"), ("cnn", "cnn")), (("vit", "vit"), ("cnn", "cnn2")),
                                        (("vit", "vit2"), ("cnn", "cnn")), (("vit", "vit2"), ("cnn", "cnn2"))]
    quick, _ = study_tables(base, [], quick=True, teacher_ids=["vit", "cnn"], transfer=False)
    assert [r.name for r in quick["quick"]] == list(QUICK_ROWS)
    kd_cnn = next(r for r in quick["quick"] if r.name == "kd-cnn")
    assert kd_cnn.update == {**BASELINE_BASE, "method": "kd", "baseline_teacher": "cnn", "tau": KD_TAU}  # its own tau
    tune_rows = study_tables(base, ["tune"], quick=False, teacher_ids=["vit", "cnn"], transfer=False)[0]["tune"]
    assert len(tune_rows) == 1 + 3 * 4  # CE, then per tau: KD from each teacher and DT-KD at two (beta, gamma)
    assert {r.update.get("tau") for r in tune_rows[1:]} == {1.0, 2.0, 4.0}
    full, notes = study_tables(base, list(TABLES), quick=False, teacher_ids=["vit", "cnn"], transfer=False)
    assert list(full) == [t for t in TABLES if t != "transfer"] + ["transfer"]  # the few-label rows are in the full study
    assert [r.labels_per_class for r in full["transfer"]] == [16, 16, 16] and notes


def test_moving_dtkd_defaults_moves_dtkd_rows_only():
    """DT-KD's tau, beta and gamma (the config's) reach every DT-KD row and no other row: the
    baselines keep the distill section they were tuned on, so their cells stay the same cells."""
    def resolved(tables, base):
        return {(t, r.name): DistillConfig.model_validate({**base.model_dump(), **r.update})
                for t, rows in tables.items() for r in rows}

    kw = dict(quick=False, teacher_ids=["vit", "cnn"], transfer=False)
    names = list(TABLES) + ["tune", "tune-baselines"]
    old_base = DistillConfig(tau=4.0, beta=0.1, gamma=0.1)
    new_base = DistillConfig(tau=2.0, beta=1.0, gamma=1.0)
    old, new = (resolved(study_tables(b, names, **kw)[0], b) for b in (old_base, new_base))
    assert old.keys() == new.keys()
    moved = {k for k in old if old[k] != new[k]}
    assert moved and all(new[k].method == "dtkd" for k in moved)
    assert all(old[k] == new[k] for k in old if new[k].method != "dtkd")
    dkd = new[("1", "dkd")]
    assert (dkd.tau, dkd.beta, dkd.gamma) == (4.0, 0.1, 0.1) and new[("1", "rkd")].gamma == 0.01
    assert (new[("1", "dtkd")].tau, new[("1", "dtkd")].beta) == (2.0, 1.0)


def test_a_study_without_table1_runs_table1s_ce_cells():
    """CE is every row's reference: a study of tables that do not list it (--tables 5 6 terms)
    adds it on the baselines' distill section, as Table 1 runs it, so it reuses those cells
    (it once added CE on DT-KD's section: other keys, the same numbers computed again)."""
    kw = dict(quick=False, teacher_ids=["vit", "cnn"], transfer=False)
    base = DistillConfig(tau=2.0, beta=1.0, gamma=1.0)
    table1_ce = next(r for r in study_tables(base, ["1"], **kw)[0]["1"] if r.name == "none")
    rows = reproduce._study_rows(study_tables(base, ["5", "6", "terms"], **kw)[0])
    ce = [r for r in rows if r.name == "none"]
    assert ce == [table1_ce] and ce[0].update == {**BASELINE_BASE, "method": "none"}


def test_every_other_baseline_is_tuned_over_three_values_one_of_them_its_table1_setting():
    from bench.study.tables import BASELINE_GRID, BASELINE_SETTINGS, table1, tune_baselines

    base = reproduce.load_config(reproduce.REPO / "configs" / "default.yaml").distill  # the study's
    rows = tune_baselines(base)
    assert rows[0].name == "none" and len(rows) == 1 + 3 * len(BASELINE_GRID)

    def resolved(row):
        return DistillConfig.model_validate({**base.model_dump(), **row.update})

    table1_rows = {r.name: r for r in table1(base)}
    for method in BASELINE_GRID:
        grid = [r for r in rows[1:] if r.update["method"] == method]
        configs = [resolved(r) for r in grid]
        assert len(grid) == 3 and len({c.model_dump_json() for c in configs}) == 3  # three distinct settings
        assert resolved(table1_rows[method]) in configs  # Table 1's setting is a grid point: the same cells
        assert all(r.student_scale == table1_rows[method].student_scale for r in grid)  # PixelKD's smaller crop kept
    assert set(BASELINE_SETTINGS) <= set(BASELINE_GRID)  # every Table 1 choice was made on its grid
    dkd = [resolved(r).dkd_beta for r in rows if r.update["method"] == "dkd"]
    assert dkd == [8.0, 2.0, 1.0]
    at = sorted(resolved(r).at_weight for r in rows if r.update["method"] == "at")
    assert at == pytest.approx([0.78125, 7.8125, 78.125])  # a tenth and ten times the paper's


def test_rows_cuts_every_table_to_the_named_rows_and_ce():
    base = DistillConfig()
    tables = study_tables(base, ["1", "tune"], quick=False, teacher_ids=["vit", "cnn"], transfer=False)[0]
    cut = reproduce.only_rows(tables, ["dtkd tau=2 beta=1 gamma=1"])
    assert list(cut) == ["tune"]  # Table 1 has no such row: dropped, not left as CE alone
    assert [r.name for r in cut["tune"]] == ["none", "dtkd tau=2 beta=1 gamma=1"]
    assert [r.name for r in reproduce.only_rows(tables, ["dtkd"])["1"]] == ["none", "dtkd"]
    with pytest.raises(SystemExit, match="'dtkd tau=3'"):
        reproduce.only_rows(tables, ["dtkd tau=3"])


# ------------------------------------------------------------------------------ cell key
def test_cell_key_changes_with_every_input_and_only_then(monkeypatch):
    from bench.study.cells import StudyContext, build_stage

    def stage(data_root="unused", seed=0, **distill):
        cfg = validate_config(_tiny(data_root))
        ctx = StudyContext(config=cfg, manifest=None, teachers={}, refs={r: cfg.distill_stage().teachers[r] for r in
                           ("vit", "cnn")}, cache_dir=None, threads=1)
        return build_stage(ctx, Row("r", {"method": "dtkd", **distill}), seed)

    base = dict(teacher_hashes={"vit": "a", "cnn": "b"}, student_init=None, seed=0, rows="r0", threads=1)
    key = cell_key(stage(), **base)
    assert key == cell_key(stage(), **base)  # stable
    assert key == cell_key(stage(data_root="/elsewhere"), **base)  # where the data lies is not what it is
    variants = [
        (stage(tau=2.0), base), (stage(seed=1), base), (stage(), {**base, "seed": 1}),
        (stage(), {**base, "teacher_hashes": {"vit": "a", "cnn": "c"}}), (stage(), {**base, "student_init": "s"}),
        (stage(), {**base, "rows": "r1"}), (stage(), {**base, "threads": 2}),
    ]
    keys = {cell_key(s, **kw) for s, kw in variants}
    assert key not in keys and len(keys) == len(variants)
    import torch

    monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    assert cell_key(stage(), **base) != key  # another torch build


def test_the_pixelkd_row_gives_the_student_half_the_teachers_crop():
    from bench.study.cells import StudyContext, build_stage
    from bench.study.tables import table1

    cfg = validate_config(_tiny())
    ctx = StudyContext(config=cfg, manifest=None, teachers={}, refs={r: cfg.distill_stage().teachers[r] for r in
                       ("vit", "cnn")}, cache_dir=None, threads=1)
    rows = {r.name: r for r in table1(cfg.distill)}
    assert build_stage(ctx, rows["pixelkd"], 0).student.crop_size == 16  # 0.5 x the ViT teacher's 32
    assert build_stage(ctx, rows["dtkd"], 0).student.crop_size == 32
    assert "pixelkd" not in BASELINES  # its student sees a quarter of the pixels: not a like-for-like baseline


def test_a_second_teacher_keeps_the_clip_and_only_the_options_it_accepts():
    from bench.study.teachers import TeacherSpec, config_for

    data = _tiny()
    data["models"]["vit_teacher"].update(frames=8, sampling_rate=1, overrides={"stem": "conv"})
    data["models"]["cnn_teacher"]["overrides"] = {"spatial_strides": [2, 2, 2, 1]}
    cfg = validate_config(data)
    vit2 = config_for(cfg, TeacherSpec("vit2", "vit", "swin3d_tiny")).teacher_ref("vit")
    assert (vit2.name, vit2.frames, vit2.sampling_rate, vit2.crop_size) == ("swin3d_tiny", 8, 1, 32)
    assert vit2.overrides == {"stem": "conv"}  # swin3d_tiny has a conv stem too
    cnn2 = config_for(cfg, TeacherSpec("cnn2", "cnn", "i3d_tiny")).teacher_ref("cnn")
    assert cnn2.name == "i3d_tiny" and cnn2.overrides == {}  # X3D's strides mean nothing to an I3D


def test_a_baselines_own_knob_keys_only_that_baselines_cells():
    from bench.study.cells import StudyContext, build_stage

    def key(**distill):
        cfg = validate_config(_tiny())
        ctx = StudyContext(config=cfg, manifest=None, teachers={}, refs={r: cfg.distill_stage().teachers[r] for r in
                           ("vit", "cnn")}, cache_dir=None, threads=1)
        return cell_key(build_stage(ctx, Row("r", distill), 0), teacher_hashes={}, student_init=None, seed=0,
                        rows="r0", threads=1)

    assert key(method="dtkd") == key(method="dtkd", at_weight=1.0) == key(method="dtkd", dkd_beta=2.0)
    assert key(method="at") != key(method="at", at_weight=1.0)
    assert key(method="dkd") != key(method="dkd", dkd_beta=2.0)
    assert key(method="at", dkd_beta=2.0) == key(method="at")


# ------------------------------------------------------------------------------ tiny runs
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The quick study on the tiny config (1 epoch, 2 seeds, 1 process), run twice on one cache."""
    tmp = tmp_path_factory.mktemp("study")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_tiny()))
    argv = ["--config", str(cfg), "--quick", "--seeds", "2", "--jobs", "1", "--epochs", "1",
            "--cache-dir", str(tmp / "cache")]
    runs = []
    for i in range(2):
        out, stdout = tmp / f"out{i}", io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = reproduce.main([*argv, "--out-dir", str(out)])
        runs.append((code, json.loads((out / "results.json").read_text()), out, stdout.getvalue()))
    return runs


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:phi_CNN fitted")
def test_tiny_quick_study_last_line_and_outputs(tiny_study):
    code, study, out, stdout = tiny_study[0]
    assert code == 0
    lines = stdout.strip().splitlines()
    last = json.loads(lines[-1])
    assert set(last) == HEADLINE_KEYS
    assert last["seeds"] == [0, 1] and set(last["teachers"]) == {"vit", "cnn"}
    assert last["best_baseline_name"] in {"kd-vit", "kd-cnn"}
    for k in ("ce", "dtkd", "best_baseline"):
        assert 0.0 <= last[k] <= 1.0
    for k in ("delta_ce_ci", "delta_best_ci"):
        assert len(last[k]) == 2 and last[k][0] <= last[k][1]
    assert last == study["headline"]
    assert study["setup"]["cells"] == {"cached": 0, "computed": 2 * len(QUICK_ROWS), "failed": 0}
    assert study["setup"]["threads"] == 1 and study["setup"]["cpu"]
    assert (out / "results.md").read_text().startswith("# Reproduction study")
    assert {p.name for p in (out / "results").glob("*.png")} == {
        "accuracy_tablequick.png", "curves_ce_vs_dtkd.png", "datw_weights.png", "per_class_gain.png"}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:phi_CNN fitted")
def test_second_run_recomputes_nothing(tiny_study):
    (_, first, _, _), (code, second, _, _) = tiny_study
    assert code == 0
    assert second["setup"]["cells"] == {"cached": 2 * len(QUICK_ROWS), "computed": 0, "failed": 0}
    assert all(t["cached"] for t in second["teachers"].values())
    assert second["headline"] == first["headline"]


def _figures(cell: dict) -> dict:
    """A cell's results without wall-clock figures and the (cache-dependent) data location."""
    timing = {"seconds", "epoch_time_s", "clips_per_s"}
    out = {k: v for k, v in cell.items() if k not in timing and k != "stage"}
    out["history"] = [{k: v for k, v in h.items() if k not in timing} for h in cell["history"]]
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:phi_CNN fitted")
def test_a_cell_reproduces_exactly_from_a_fresh_cache(tmp_path):
    """Teachers and one DT-KD cell, trained twice from nothing with the same threads: equal to the bit."""
    runs = []
    for i in range(2):
        study = reproduce.run_study(validate_config(_tiny()), tables=["8"], seeds=1, jobs=1, threads=1,
                                    cache_dir=tmp_path / f"cache{i}", epochs=1, latency_repeats=1)
        assert study["setup"]["cells"]["computed"] == 2
        runs.append(study)
    a, b = ({k: _figures(cell) for k, cell in s["cells"].items()} for s in runs)
    assert a == b and len(a) == 2
    assert a[next(iter(a))]["history"] and "test_per_class" in a[next(iter(a))]
    assert [t["state_hash"] for t in runs[0]["teachers"].values()] == [t["state_hash"] for t in runs[1]["teachers"].values()]
    assert runs[0]["table8"]["claim"]["holds"] in (True, False)


def test_few_labels_keeps_n_per_class_and_turns_the_rest_into_the_transfer_set():
    import pandas as pd

    from bench.study.cells import few_labels

    rows = [{"video_id": f"{c}{k}", "label": c, "label_idx": i, "split": "train"}
            for i, c in enumerate("ab") for k in range(4)]
    rows += [{"video_id": "t0", "label": "a", "label_idx": 0, "split": "test"}]
    out = few_labels(pd.DataFrame(rows), 1)
    assert out.loc[out["split"] == "train", "video_id"].tolist() == ["a0", "b0"]
    pool = out[out["split"] == "unlabelled"]
    assert len(pool) == 6 and set(pool["label_idx"]) == {-1} and set(pool["label"]) == {""}
    assert out.loc[out["split"] == "test", "video_id"].tolist() == ["t0"]


def test_an_option_added_later_at_its_off_value_keeps_the_key():
    from bench.study.keys import stage_json
    from dtkd.config import validate_config

    base = {"models": {"student": {"name": "x3d_tiny"}, "cnn_teacher": {"name": "x3d_tiny_m"},
                       "vit_teacher": {"name": "mvit_tiny"}}}
    on = validate_config({**base, "distill": {"transfer_set": True}, "data": {"unlabelled": "synthetic"}})
    off = stage_json(validate_config(base).distill_stage())
    assert "transfer_set" not in off["distill"] and "unlabelled" not in off["data"]
    assert "unused" not in off["data"]["synthetic"]["clips_per_class"]
    turned_on = stage_json(on.distill_stage())
    assert turned_on["distill"]["transfer_set"] is True and turned_on["data"]["unlabelled"] == "synthetic"


def test_a_pretraining_the_repository_ships_is_loaded_not_trained(tmp_path):
    """As the pipeline's pretraining step: a shipped backbone whose record's key is exactly this
    pretraining (stage and corpus bytes) is loaded; its cache key is the file's hash, so turning
    shipping off (or any other pretraining) plans a training under another key."""
    import hashlib

    import torch

    from bench.study import teachers
    from bench.study.keys import state_hash
    from dtkd.assemble import build_model
    from dtkd_ops.shipped import pretrain_key

    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    data = _tiny()
    data["pretraining"]["shipped"] = str(shipped_dir)
    config = reproduce.study_config(validate_config(data), tmp_path / "cache")
    corpus = reproduce.load_manifest(config.pretraining.data)
    stage = config.pretrain_stage("cnn")
    torch.manual_seed(0)
    state = build_model(stage.model, 2).state_dict()
    torch.save(state, shipped_dir / "dtkd-pretrained-cnn.pt")
    sha = hashlib.sha256((shipped_dir / "dtkd-pretrained-cnn.pt").read_bytes()).hexdigest()
    record = {"key": pretrain_key(stage, corpus), "weights": "dtkd-pretrained-cnn.pt", "sha256": sha,
              "corpus_test_top1": 0.25, "trained": {"cpu": "some CPU", "threads": "2"}}
    (shipped_dir / "dtkd-pretrained-cnn.json").write_text(json.dumps(record))

    plan = teachers.plan_pretrain(config, "cnn", corpus, cache_dir=tmp_path / "cache", epochs=None, threads=1)
    assert plan.shipped is not None and "-shipped-" in plan.path.name
    meta = teachers._pretrain(plan, corpus)
    assert meta["source"] == "shipped:dtkd-pretrained-cnn.pt" and meta["corpus_test_top1"] == 0.25
    assert meta["state_hash"] == state_hash(state) and meta["seconds"] == 0.0 and plan.path.is_file()
    assert teachers._pretrain(plan, corpus)["cached"]

    other = teachers.plan_pretrain(config, "cnn", corpus, cache_dir=tmp_path / "cache", epochs=2, threads=1)
    assert other.shipped is None and other.key != plan.key  # another pretraining: trained
    off = config.model_copy(update={"pretraining": config.pretraining.model_copy(update={"shipped": None})})
    trained = teachers.plan_pretrain(off, "cnn", corpus, cache_dir=tmp_path / "cache", epochs=None, threads=1)
    assert trained.shipped is None and trained.path != plan.path
