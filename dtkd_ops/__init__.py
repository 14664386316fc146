"""dtkd's MLOps library: data quality gate (Great Expectations), model registry and promotion gate
(MLflow), data versioning (DVC) and the ``dtkd`` command line.

Nothing here imports ZenML: the thin wrappers in ``steps/`` do. The heavy libraries (GX, MLflow,
DVC, torch) are imported by the submodule that needs them, so ``import dtkd_ops`` stays cheap::

    from dtkd_ops.quality import QualityRules, run_quality_gate
    from dtkd_ops.registry import register_candidate, get_champion, load_model
    from dtkd_ops.gate import GateConfig, load_gate_config, evaluate_gate, promote_if_better
    from dtkd_ops.data_version import data_version
"""

__all__ = ["cli", "data_version", "evaluation", "gate", "probe", "quality", "registry", "runconfig", "stages"]
