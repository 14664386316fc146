"""Evaluation: accuracy, confusion matrix, latency; complexity (params, FLOPs) in .complexity."""
from dtkd.eval.metrics import EvalResult, evaluate, measure_latency_ms, topk_correct

__all__ = ["EvalResult", "evaluate", "measure_latency_ms", "topk_correct"]
