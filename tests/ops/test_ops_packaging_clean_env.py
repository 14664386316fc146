"""A registered model loads and predicts in a clean venv built from its own requirements
(issue 12, item 5): ``mlflow.pytorch.load_model("models:/dtkd-student@champion")``, with neither
dtkd nor pytorchvideo installed and pickle deserialization switched off.

The venv is made with ``python -m venv`` and ``pip install -r`` of the model's requirements.txt
through pip's configured index/mirror and cache. torch is the exception: its wheel with CUDA
libraries is gigabytes, so by default the host's installed torch (and only its dependency
closure) is hard-linked into the venv, and pip sees the pinned ``torch==`` as satisfied. Set
``DTKD_CLEAN_VENV_TORCH=pip`` to have pip install torch too (minutes, GBs).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from dtkd import models
from dtkd.config import ModelRef
from dtkd_ops import packaging
from dtkd_ops.registry import ModelRegistry, sqlite_uri

NAME = "dtkd-student"
REF = ModelRef(name="x3d_tiny", frames=4, crop_size=32)
PIP_TIMEOUT_S = 900

LOAD_SCRIPT = textwrap.dedent('''
    import importlib.util, json, os, sys
    import numpy as np
    import mlflow, torch
    absent = [m for m in ("dtkd", "dtkd_ops", "pytorchvideo") if importlib.util.find_spec(m)]
    assert not absent, f"the clean venv can import {absent}"
    uri = sys.argv[1]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model_uri = "models:/%s@champion" % sys.argv[2]
    model = mlflow.pytorch.load_model(model_uri)
    clips = np.load(sys.argv[3])
    with torch.no_grad():
        logits = model(torch.from_numpy(clips)).numpy()
    pyfunc = mlflow.pyfunc.load_model(model_uri).predict(clips)
    info = mlflow.models.get_model_info(model_uri)
    print(json.dumps({"logits": logits.tolist(), "pyfunc": np.asarray(pyfunc).tolist(),
                      "signature": str(info.signature), "type": type(model).__name__,
                      "torch": torch.__version__, "mlflow": mlflow.__version__}))
''')


def _requirement_closure(name: str) -> set[str]:
    """Installed distributions ``name`` needs (its requirements, recursively, markers applied)."""
    from packaging.requirements import Requirement

    seen, todo = set(), [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links (free, and pip replacing a file in the venv cannot touch the host's copy)."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link, symlinks=True)
    else:
        os.link(src, dst)


def _share_host_torch(site_packages: Path) -> list[str]:
    """The host's torch and its dependency closure, file by file, in the clean venv."""
    linked = []
    for name in sorted(_requirement_closure("torch")):
        dist = metadata.distribution(name)
        root = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            if (root / top).exists() and not (site_packages / top).exists():
                _link_tree(root / top, site_packages / top)
        linked.append(f"{name}=={dist.version}")
    return linked


def _clean_venv(where: Path, requirements: Path) -> tuple[Path, float]:
    """A venv with the model's requirements and nothing of dtkd's; (python, seconds)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    if os.environ.get("DTKD_CLEAN_VENV_TORCH", "host") != "pip":
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        _share_host_torch(Path(site))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # --no-compile: byte-compiling mlflow's ~100 dependencies doubled the install (3m09s vs 1m25s)
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
                           "-r", str(requirements)], capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    if done.returncode != 0:
        pytest.fail(f"pip install -r {requirements} failed in the clean venv:\n{done.stderr[-3000:]}")
    return python, time.monotonic() - start


@pytest.mark.slow
def test_champion_loads_and_predicts_in_a_clean_venv_from_its_own_requirements(tmp_path):
    import mlflow

    uri = sqlite_uri(tmp_path / "store" / "mlflow.db")
    registry = ModelRegistry(uri)
    torch.manual_seed(0)
    model = models.build("x3d_tiny", 3, frames=4, crop_size=32).eval()
    ref = registry.register_candidate(model, registered_name=NAME, metrics={"top1": 0.5}, dataset_fingerprint="fp",
                                      input_spec=REF.input_spec(), build_options=REF.overrides)
    registry.set_champion(NAME, ref.version)
    with registry._using_store():
        requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}@champion"))

    clips = packaging.example_clips(REF.input_spec(), batch=3, seed=7)
    np.save(tmp_path / "clips.npy", clips)
    (tmp_path / "load.py").write_text(LOAD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # nothing in the model may need unpickling
    try:
        python, seconds = _clean_venv(tmp_path / "venv", requirements)
        done = subprocess.run([python, "load.py", uri, NAME, "clips.npy"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # cwd: not the repo (no dtkd on sys.path)
    finally:
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # ~0.9 GB; pytest keeps 3 tmp dirs
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"clean venv built in {seconds:.0f} s; loaded {out['type']} with torch {out['torch']}, "
          f"mlflow {out['mlflow']}; signature:\n{out['signature']}")

    with torch.no_grad():
        want = model(torch.from_numpy(clips)).numpy()
    assert np.allclose(out["logits"], want, atol=packaging.MAX_ABS_DIFF)
    assert np.allclose(out["pyfunc"], want, atol=packaging.MAX_ABS_DIFF)
    assert "Tensor('float32', (-1, 3, 4, 32, 32))" in out["signature"] and "(-1, 3)" in out["signature"]
