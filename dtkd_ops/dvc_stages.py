"""DVC data stages derived from a run config: the run config is the one source of truth for data.

    python -m dtkd_ops.dvc_stages configs/tiny.yaml          # writes (or finds) datasets/tiny/, prints its dvc.yaml
    python -m dtkd_ops.dvc_stages --check configs/*.yaml     # exit 1 when a committed pipeline is stale

A run config's ``parameters.config.data`` (and ``pretraining.data``) says what data a run uses.
From it this module derives a DVC pipeline in ``datasets/<name>/``: ``params.yaml`` (the data
sections resolved with every default, the quality rules and the clip length the models need) and
``dvc.yaml`` (generate -> manifest -> quality -> store, only the stages that data needs: no
``generate`` for a real dataset, no ``store`` when it is off). The stage commands read nothing but
that ``params.yaml``, so ``make data CONFIG=<any config>`` runs exactly that config's stages and
nothing for a dataset it does not use, and the ZenML pipeline (which reads the same run config)
finds the data the stages produced.

``<name>`` is the run config's file stem, unless a pipeline with identical content exists already
(two configs with the same data share one DVC pipeline: DVC refuses two stages writing one path).
The derived files are committed with their ``dvc.lock``; :func:`check` (a test) keeps the shipped
ones in step with the configs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from dtkd_ops._io import atomic_write_text, load_yaml_mapping

DATASETS_DIR = Path("datasets")
HEADER = ("# Derived from a run config by `python -m dtkd_ops.dvc_stages` (make data): edit the run config's\n"
          "# data section, not this file. docs/mlops.md (\"Data versioning\").\n")
_CODE = {
    "generate": ["dtkd/data/synthetic.py", "dtkd/data/synthetic_scenes.py"],
    "manifest": ["dtkd/data/manifest.py", "dtkd/data/formats.py", "dtkd/data/prepare.py", "dtkd_ops/stages.py"],
    "quality": ["dtkd_ops/quality.py", "dtkd_ops/probe.py", "dtkd_ops/_gx.py"],
    "store": ["dtkd/data/store.py", "dtkd/data/video.py"],
}


def load_run_config(path: str | Path):
    """The validated DTKDConfig of a ZenML run config (its ``parameters.config``)."""
    from dtkd.config import validate_config

    raw = load_yaml_mapping(path)
    config = (raw.get("parameters") or {}).get("config")
    if config is None:
        raise ValueError(f"{path}: no parameters.config section (is it a run config?)")
    return validate_config(config, source=str(path), prefix="parameters.config")


def derived_params(cfg) -> dict[str, Any]:
    """What the data stages need, resolved: the data sections with every default filled in, and the
    clip length (frames x sampling rate) of the longest view any model reads."""
    params: dict[str, Any] = {"data": cfg.data.model_dump(mode="json"), "min_frames": cfg.min_frames()}
    corpus = cfg.pretraining.data
    if cfg.pretraining.roles and corpus.dataset == "synthetic":
        params["pretraining_data"] = corpus.model_dump(mode="json")
    return params


def _stage(cmd: str, *, deps: list[str], params: list[str], outs: list) -> dict:
    return {"cmd": cmd, "wdir": "../..", "deps": list(deps), "params": params, "outs": outs}  # copies: no YAML anchors


def derived_stages(params: dict[str, Any], pipeline_dir: Path) -> dict[str, Any]:
    """The dvc.yaml of ``params`` (paths relative to the repository root: every stage runs there)."""
    data = params["data"]
    params_file = (pipeline_dir / "params.yaml").as_posix()
    work = Path("data") / pipeline_dir.name
    manifest, quality = (work / "manifest.parquet").as_posix(), work / "quality"
    clean, quarantine = (quality / "clean_manifest.parquet").as_posix(), (quality / "quarantine.csv").as_posix()
    run = f"python -m dtkd_ops.stages {{}} --params {params_file}"

    def keys(*names: str) -> list:
        return [{params_file: list(names)}]

    stages: dict[str, Any] = {}
    if data["dataset"] == "synthetic":
        stages["generate"] = _stage(run.format("generate"), deps=_CODE["generate"], params=keys("data.synthetic"),
                                    outs=[data["root"]])
    if "pretraining_data" in params:
        stages["generate_pretraining_corpus"] = _stage(
            run.format("generate") + " --section pretraining_data", deps=_CODE["generate"],
            params=keys("pretraining_data.synthetic"), outs=[params["pretraining_data"]["root"]])
    video_deps = [data["root"]] + [v for v in [data["reader"].get("video_dir")] if v]
    stages["manifest"] = _stage(
        run.format("manifest") + f" --out {manifest}", deps=video_deps + _CODE["manifest"],
        params=keys("data.dataset", "data.split", "data.reader", "data.on_bad_video", "data.val", "data.unlabelled"),
        outs=[manifest])
    # Only what is a function of the data is a DVC output: the reports (GX Data Docs, timings)
    # hold timestamps, and an output that changes on every run would rewrite dvc.lock every run.
    stages["quality"] = _stage(
        run.format("quality") + f" --manifest {manifest} --out {quality.as_posix()}",
        deps=[manifest] + video_deps + _CODE["quality"], params=keys("data.quality", "min_frames"),
        outs=[clean, quarantine])
    if data["store"]["enabled"]:
        stages["store"] = _stage(run.format("store") + f" --manifest {clean}",
                                 deps=[clean] + video_deps + _CODE["store"], params=keys("data.store"),
                                 outs=[data["store"]["dir"]])
    return {"stages": stages}


def render(config_path: str | Path) -> str:
    """The params.yaml text of a run config's data. The pipeline directory's name appears in the
    dvc.yaml only, so this text alone identifies the data (and finds a pipeline that has it)."""
    return HEADER + yaml.safe_dump(derived_params(load_run_config(config_path)), sort_keys=True)


def _dvc_text(params_text: str, pipeline_dir: Path) -> str:
    params = yaml.safe_load(params_text)
    return HEADER + yaml.safe_dump(derived_stages(params, pipeline_dir), sort_keys=False, width=120)


def pipeline_dir_for(config_path: str | Path, repo: str | Path = ".") -> tuple[Path, str, str]:
    """``(datasets/<name>, params text, dvc.yaml text)``: an existing pipeline with the same params
    if there is one, else ``datasets/<config stem>``."""
    params_text = render(config_path)
    root = Path(repo) / DATASETS_DIR
    for existing in sorted(root.glob("*/params.yaml")):
        if existing.read_text() == params_text:
            rel = existing.parent.relative_to(repo)
            return rel, params_text, _dvc_text(params_text, rel)
    rel = DATASETS_DIR / Path(config_path).stem
    return rel, params_text, _dvc_text(params_text, rel)


def write(config_path: str | Path, repo: str | Path = ".") -> Path:
    """Write (only when changed) the DVC pipeline of a run config; returns its dvc.yaml path."""
    rel, params_text, dvc_text = pipeline_dir_for(config_path, repo)
    target = Path(repo) / rel
    for name, text in (("params.yaml", params_text), ("dvc.yaml", dvc_text)):
        path = target / name
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
    return rel / "dvc.yaml"


def stale(config_path: str | Path, repo: str | Path = ".") -> list[str]:
    """Why the committed pipeline of a run config is out of step with it ([] when it is current)."""
    rel, params_text, dvc_text = pipeline_dir_for(config_path, repo)
    problems = []
    for name, text in (("params.yaml", params_text), ("dvc.yaml", dvc_text)):
        path = Path(repo) / rel / name
        if not path.is_file():
            problems.append(f"{rel / name} is missing")
        elif path.read_text() != text:
            problems.append(f"{rel / name} differs from what {config_path} derives")
    return problems


def missing_inputs(config_path: str | Path, repo: str | Path = ".") -> list[str]:
    """A real dataset's folders that are not there: DVC would stop on a missing dependency; this
    says which key points where, before it does."""
    data = load_run_config(config_path).data
    if data.dataset == "synthetic":
        return []
    found = []
    for key, value in (("data.root", data.root), ("data.reader.video_dir", data.reader.get("video_dir"))):
        if value is not None and not (Path(repo) / value).exists():
            found.append(f"{config_path}: parameters.config.{key} = {value} does not exist: put the "
                         f"{data.dataset} dataset there (or `dvc import-url` it) or change the key")
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtkd_ops.dvc_stages", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="run configs (ZenML run-config YAML)")
    parser.add_argument("--check", action="store_true", help="only check that the committed pipelines are current")
    parser.add_argument("--repo", default=".", help="repository root (default: .)")
    args = parser.parse_args(argv)
    status = 0
    for config in args.configs:
        try:
            if args.check:
                problems = stale(config, args.repo)
                for line in problems:
                    print(f"stale: {line} (run `python -m dtkd_ops.dvc_stages {config}`)", file=sys.stderr)
                status = max(status, 1 if problems else 0)
                continue
            written = write(config, args.repo)
            missing = missing_inputs(config, args.repo)
            if missing:
                print("\n".join(f"error: {m}" for m in missing), file=sys.stderr)
                return 2
            print(written.as_posix())
        except (ValueError, FileNotFoundError) as err:
            print(f"dtkd_ops.dvc_stages: error: {err}", file=sys.stderr)
            return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
