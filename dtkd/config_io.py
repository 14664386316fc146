"""Reading config files and naming what is wrong in them: every error names the file and the
key. Apart from :mod:`dtkd.config` (which imports the model and training layers, and torch with
them) so that the DVC data stages, which only read YAML and validate a data section, start
without torch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def format_validation_error(err: ValidationError, *, source: str, prefix: str = "",
                            title: str = "invalid configuration") -> str:
    """``source: title`` then one line per bad key: ``  key.path: message (got value)``."""
    return _format_errors(err, source=source, title=title, prefix_of=lambda loc: prefix)


def _format_errors(err: ValidationError, *, source: str, title: str, prefix_of) -> str:
    lines = [f"{source}: {title}"]
    for e in err.errors():
        key = ".".join(str(p) for p in (*([prefix_of(e["loc"])] if prefix_of(e["loc"]) else []), *e["loc"]))
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {e['msg']}{got}")
    return "\n".join(lines)


def read_yaml(path: str | Path, *, what: str = "file") -> Any:
    """The parsed content of a YAML file. Errors name the file: FileNotFoundError
    ("<path>: <what> not found") or ValueError ("<path>: not valid YAML: ...")."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
