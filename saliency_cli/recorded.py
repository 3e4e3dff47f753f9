"""The effective config of every map, recorded in OUT so that the maps can be
evaluated (`saliency evaluate OUT`) without the command that made them.

`saliency explain` writes `OUT/settings/<digest>.json` for each method it
runs, where `<digest>` is the method's settings digest (plan.settings_digest),
the same one its manifest records carry under `settings`:

    {"schema_version": 1, "digest": "3f9c2a0b17d4e6a1", "cwd": "/home/me/project",
     "params": {<the method's parameters, every one>},
     "config": {<the rest of the config, as `saliency config` prints it>}}

The digest covers the parameters, not the method's name: methods with the
same parameters (gradient, deconvnet and guided-backprop all have just
`reduce`) share a file. Several runs with different settings may write into
one OUT: each digest has its own file. `cwd` is the folder the run was
started in: relative paths of the config (checkpoint, factory file, labels
file) and of the inputs are relative to it. Reading a file back recomputes
its digest there, so a checkpoint changed since the maps were made is caught.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import SaliencyError
from .outputs import SETTINGS_DIR, settings_path
from .plan import settings_digest
from .schema import from_mapping

SCHEMA_VERSION = 1


@dataclass
class RecordedConfig:
    """One method's effective config, as `saliency explain` recorded it."""

    digest: str
    method: str
    cwd: str  # where explain ran: relative paths are relative to it
    config: Config

    @property
    def params(self) -> Any:
        return self.config.method_params(self.method)


def save_settings(out_dir: Path, cfg: Config, params: Mapping[str, Any]) -> None:
    """Write OUT/settings/<digest>.json for each method (name -> parameters),
    atomically; a file already there has the same content and is kept."""
    folder = Path(out_dir) / SETTINGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for method, values in params.items():
        digest = settings_digest(cfg, values)
        final = Path(out_dir) / settings_path(digest)
        if final.is_file():
            continue
        data = {k: v for k, v in cfg.to_dict().items() if k not in ("methods", "run")}
        text = json.dumps({"schema_version": SCHEMA_VERSION, "digest": digest, "cwd": os.getcwd(),
                           "params": dataclasses.asdict(values), "config": data}, indent=1, default=str)
        tmp = folder / f".{digest}.{uuid.uuid4().hex}"
        try:
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no stray file


def load_settings(out_dir: Path, digest: str, method: str) -> RecordedConfig | None:
    """The recorded config of `method`'s maps made with `digest` (None when
    OUT has none), checked: it must still give the same digest where it was
    recorded."""
    path = Path(out_dir) / settings_path(digest)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cfg = from_mapping(Config, {**data["config"], "methods": {method: data["params"]}, "run": [method]}, "")
        recorded = RecordedConfig(str(data["digest"]), method, str(data.get("cwd") or "."), cfg)
    except (ValueError, KeyError, TypeError, SaliencyError) as exc:
        raise SaliencyError(f"{path}: not a recorded config of {method} maps ({exc})") from None
    check_digest(recorded.config, recorded.method, digest, recorded.cwd, where=str(path))
    return recorded


def check_digest(cfg: Config, method: str, digest: str, cwd: str, *, where: str) -> None:
    """The config must give the settings digest the maps were made with."""
    with working_dir(cwd):
        now = settings_digest(cfg, cfg.method_params(method))
    if now == digest:
        return
    checkpoint = cfg.model.checkpoint
    hint = (f"model.checkpoint {checkpoint!r} changed or is missing since the maps were made; "
            if checkpoint else "")
    raise SaliencyError(f"{where}: this config no longer matches the {method} maps: it gives settings digest "
                        f"{now}, the maps were made with {digest}; {hint}rerun `saliency explain` to remake "
                        f"the maps")


@contextmanager
def working_dir(path: str) -> Iterator[None]:
    """Run the block in `path` (the folder explain ran in), when it exists:
    relative paths of the config mean there what they meant then."""
    previous = os.getcwd()
    target = path if path and os.path.isdir(path) else previous
    os.chdir(target)
    try:
        yield
    finally:
        os.chdir(previous)
