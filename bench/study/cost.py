"""Table 8: parameters, FLOPs and CPU latency (batch 1) of every model of the study, next to its
accuracy, and whether the distilled student reaches its ViT teacher's accuracy at <= 10% of the
teacher's FLOPs (the paper's claim)."""
from __future__ import annotations

from typing import Any, Mapping

from bench.study.analysis import CE_ROW, DTKD_ROW
from bench.study.pool import threads_in_process
from dtkd.assemble import build_model
from dtkd.config import ModelRef
from dtkd.eval.complexity import inference_cost

FLOPS_SHARE = 0.10


def measure(ref: ModelRef, num_classes: int, *, repeats: int, threads: int) -> dict[str, Any]:
    """Cost of one clip of the model's view; the weights do not change it, so the model is built
    fresh (its ``pretrained`` left out). An fvcore failure leaves GFLOPs out, not the row."""
    view = ref.view()
    shape = (1, 3, view.frames, view.crop_size, view.crop_size)
    model = build_model(ref.model_copy(update={"pretrained": None}), num_classes)
    with threads_in_process(threads):
        try:
            cost = inference_cost(model, shape, repeats=repeats, warmup=2)
        except Exception as err:  # noqa: BLE001
            cost = inference_cost(model, shape, flops=False, repeats=repeats, warmup=2)
            cost["gflops_error"] = f"{type(err).__name__}: {err}"
    return {"model": ref.name, "input": list(shape[1:]), **cost}


def table8(student: ModelRef, refs: Mapping[str, ModelRef], teachers: Mapping[str, dict], rows: Mapping[str, dict],
           num_classes: int, *, repeats: int, threads: int) -> dict[str, Any]:
    """{"models": [...], "claim": {...}}: one entry per teacher (its test top-1) and one for the
    student (mean test top-1 of the CE and DT-KD rows)."""
    models = []
    for tid, ref in refs.items():
        models.append({"id": tid, "test_top1": teachers[tid]["test_top1"], "val_top1": teachers[tid]["val_top1"],
                       **measure(ref, num_classes, repeats=repeats, threads=threads)})
    s_cost = measure(student, num_classes, repeats=repeats, threads=threads)
    for name in (CE_ROW, DTKD_ROW):
        if name in rows:
            summ = rows[name]["test_summary"]
            models.append({"id": f"student ({name})", "test_top1": summ["mean"], "test_top1_std": summ["std"],
                           "val_top1": rows[name]["val_summary"]["mean"], **s_cost})
    return {"models": models, "claim": claim(models)}


def claim(models: list[dict]) -> dict[str, Any]:
    """Does the DT-KD student reach the ViT teacher's test top-1 at <= 10% of its GFLOPs?"""
    by_id = {m["id"]: m for m in models}
    vit, student = by_id.get("vit"), by_id.get(f"student ({DTKD_ROW})")
    if vit is None or student is None or student["test_top1"] is None:
        return {"holds": None, "why": "needs the ViT teacher and the DT-KD row"}
    share = (student["gflops"] / vit["gflops"]) if vit.get("gflops") and "gflops" in student else None
    reaches = student["test_top1"] >= vit["test_top1"]
    cheap = share is not None and share <= FLOPS_SHARE
    return {"holds": bool(reaches and cheap), "reaches_accuracy": bool(reaches), "flops_share": share,
            "student_top1": student["test_top1"], "vit_top1": vit["test_top1"]}
