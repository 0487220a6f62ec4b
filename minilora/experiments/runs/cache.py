"""The run cache: fine-tuning runs kept on disk, keyed by everything that decides their figures -- the code included.

Set ``MINILORA_RUN_CACHE`` to a folder and every run a verify trains is kept there, so that a
report can be made again, or one claim rerun (``verify --only KEY --merge``), without training
again. A run is two files, never a pickle (docs/files.md):

    <key>.json          the request (the run's spec; its base, the sha256 of the base's weights and
                        data and what else decides its figures; the sha256 of the minilora package's
                        source; the numpy / torch / peft / transformers versions), the result (the
                        training losses, test and validation figures, trainable count), its
                        provenance (date, the machine's load, the training's wall time), the sha256
                        of the weights file, and a checksum of all of it
    <key>.safetensors   the trained weights (an adapter, or the whole model)

``key`` is the sha256 of the request: a run trained by other code, or on other data, has another
key and is never read back. An entry that does not parse, whose checksum, request or weights do
not match what was asked for, is named in a ``RunCacheWarning``, ignored and trained again.

A run's training time is kept as provenance only: no claim reports a time from a run (times are
measured in the process that writes them; ``core.timing``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from minilora.experiments.core import provenance
from minilora.experiments.runs.spec import RunResult

FORMAT = "minilora run cache"
VERSION = 1


class RunCacheWarning(UserWarning):
    """An entry of the run cache that cannot be used: it is named, ignored and trained again."""


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def request(base: str, spec, identity: dict) -> dict:
    """Everything that decides a run's figures: the spec, the base and its hashes (``identity``), the code, the versions."""
    return {"base": base, "spec": dataclasses.asdict(spec), "identity": identity, "code_sha256": provenance.code_sha256(),
            "versions": {k: v for k, v in provenance.versions().items() if k != "minilora"}}


def run_key(req: dict) -> str:
    """A run's name in the cache and in provenance: the sha256 of its request (40 hex digits)."""
    return sha256(canonical(req))[:40]


class RunCache:
    """The runs kept in ``folder`` (``RunCache.from_env()``: the folder ``MINILORA_RUN_CACHE`` names, or None)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    @classmethod
    def from_env(cls):
        folder = os.environ.get("MINILORA_RUN_CACHE")
        return cls(folder) if folder else None

    def paths(self, req: dict) -> tuple:
        key = run_key(req)
        return self.folder / f"{key}.json", self.folder / f"{key}.safetensors"

    def read(self, req: dict, spec) -> RunResult | None:
        """The cached RunResult of ``req``, or None: not there, or unusable (then a warning names the file and why)."""
        meta_path, weights_path = self.paths(req)
        if not meta_path.exists():
            return None
        try:
            return self._read(meta_path, weights_path, req, spec)
        except (ValueError, KeyError, TypeError, OSError) as err:
            warnings.warn(f"run cache: the entry {meta_path} (with {weights_path.name}) cannot be used ({err}); the run is "
                          "trained again", RunCacheWarning, stacklevel=3)
            return None

    def _read(self, meta_path: Path, weights_path: Path, req: dict, spec) -> RunResult:
        from safetensors.numpy import load

        try:
            entry = json.loads(meta_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a JSON file: {err}") from None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} entry of version {VERSION}")
        content = {k: v for k, v in entry.items() if k != "checksum"}
        if entry.get("checksum") != sha256(canonical(content)):
            raise ValueError("its checksum does not match its content (edited or damaged)")
        if canonical(entry["request"]) != canonical(req):
            raise ValueError(f"it holds another run ({entry['request'].get('spec')}) than the one asked for ({req['spec']})")
        weights = weights_path.read_bytes()
        if sha256(weights) != entry["weights_sha256"]:
            raise ValueError(f"its weights file {weights_path.name} does not match the checksum it records")
        state = {k: np.array(v) for k, v in load(weights).items()}
        res = entry["result"]
        return RunResult(spec, list(res["losses"]), dict(res["final"]), int(res["trainable"]), float(res["seconds"]),
                         state, dict(res["val"]), {**entry["provenance"], "origin": "run cache", "file": str(meta_path)},
                         {k: list(v) for k, v in res.get("rows", {}).items()})

    def write(self, req: dict, result: RunResult) -> None:
        """Keep ``result`` (weights first, then its JSON: a run killed in between leaves no entry that reads)."""
        from safetensors.numpy import save

        from minilora.io import write_atomically

        meta_path, weights_path = self.paths(req)
        weights = save({k: np.ascontiguousarray(v) for k, v in result.state.items()})
        content = {"format": FORMAT, "version": VERSION, "request": req,
                   "result": {"losses": [float(x) for x in result.losses], "final": _floats(result.final),
                              "val": _floats(result.val), "trainable": int(result.trainable), "seconds": float(result.seconds),
                              "rows": {k: [float(x) for x in v] for k, v in result.rows.items()}},
                   "provenance": {k: v for k, v in result.provenance.items() if k not in ("origin", "run")},
                   "weights_sha256": sha256(weights)}
        text = json.dumps({**content, "checksum": sha256(canonical(content))}, indent=1, sort_keys=True) + "\n"
        write_atomically({weights_path: lambda tmp: Path(tmp).write_bytes(weights),
                          meta_path: lambda tmp: Path(tmp).write_text(text)})


def _floats(figures: dict) -> dict:
    return {k: float(v) for k, v in figures.items()}
