"""Evaluation: accuracy, confusion matrix, latency; complexity (params, FLOPs) in .complexity."""
from dtkd.eval.metrics import EvalResult, evaluate, topk_correct

__all__ = ["EvalResult", "evaluate", "topk_correct"]
