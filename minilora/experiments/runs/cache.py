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

A **record** (``write_record`` / ``read_record``) is a run kept as its figures alone, one JSON file
in the same format with ``record`` in place of ``result`` and no weights: the E2E section keeps
each run so (``claims/e2e.py``: its figures up to the validation loss, and with its test output),
as nothing it reports needs the weights again. In both, NaN and the infinities are written as
``{"float": "nan"}`` (``"inf"``, ``"-inf"``), so that every file is strict JSON.

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


def trained_provenance(req: dict, seconds: float) -> dict:
    """The provenance of ``req``'s run, trained now: its key, the code, the date, the machine's load, its wall time."""
    return {"origin": "trained", "run": run_key(req), "code_sha256": provenance.code_sha256(), "date": provenance.now_utc(),
            "load": provenance.machine()["load"], "wall_seconds": round(seconds, 2)}


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
        return self._checked(meta_path, f" (with {weights_path.name})", lambda: self._read(meta_path, weights_path, req, spec))

    def read_record(self, req: dict) -> tuple | None:
        """(record, provenance) of ``req`` written by ``write_record``, or None: not there, or unusable (then a
        warning names the file and why)."""
        meta_path, _ = self.paths(req)

        def read():
            entry = _entry(meta_path, req)
            return _decode(entry["record"]), {**entry["provenance"], "origin": "run cache", "file": str(meta_path)}
        return self._checked(meta_path, "", read)

    @staticmethod
    def _checked(meta_path: Path, also: str, read):
        if not meta_path.exists():
            return None
        try:
            return read()
        except (ValueError, KeyError, TypeError, OSError) as err:
            warnings.warn(f"run cache: the entry {meta_path}{also} cannot be used ({err}); the run is trained again",
                          RunCacheWarning, stacklevel=4)
            return None

    def _read(self, meta_path: Path, weights_path: Path, req: dict, spec) -> RunResult:
        from safetensors.numpy import load

        entry = _entry(meta_path, req)
        weights = weights_path.read_bytes()
        if sha256(weights) != entry["weights_sha256"]:
            raise ValueError(f"its weights file {weights_path.name} does not match the checksum it records")
        state = {k: np.array(v) for k, v in load(weights).items()}
        res = _decode(entry["result"])
        return RunResult(spec, list(res["losses"]), dict(res["final"]), int(res["trainable"]), float(res["seconds"]),
                         state, dict(res["val"]), {**entry["provenance"], "origin": "run cache", "file": str(meta_path)},
                         {k: list(v) for k, v in res.get("rows", {}).items()})

    def write(self, req: dict, result: RunResult) -> None:
        """Keep ``result`` (weights first, then its JSON: a run killed in between leaves no entry that reads)."""
        from safetensors.numpy import save

        meta_path, weights_path = self.paths(req)
        weights = save({k: np.ascontiguousarray(v) for k, v in result.state.items()})
        _write_entry(meta_path, req, result.provenance, {
            "result": _encode({"losses": [float(x) for x in result.losses], "final": _floats(result.final),
                               "val": _floats(result.val), "trainable": int(result.trainable), "seconds": float(result.seconds),
                               "rows": {k: [float(x) for x in v] for k, v in result.rows.items()}}),
            "weights_sha256": sha256(weights)}, {weights_path: lambda tmp: Path(tmp).write_bytes(weights)})

    def write_record(self, req: dict, record: dict, provenance: dict) -> None:
        """Keep ``record`` -- plain figures (numbers, text, lists, dicts; NaN and infinities kept, as
        ``{"float": "nan"}`` and the like, so that the file stays strict JSON) -- as ``req``'s entry, JSON
        only, no weights."""
        _write_entry(self.paths(req)[0], req, provenance, {"record": _encode(record)})


def _entry(meta_path: Path, req: dict) -> dict:
    """The checked JSON entry at ``meta_path``: this format and version, its checksum right, ``req``'s request."""
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
    return entry


def _write_entry(meta_path: Path, req: dict, provenance: dict, body: dict, first: dict | None = None) -> None:
    """The JSON entry of ``req`` with ``body``, written atomically after the files of ``first`` ({path: writer})."""
    from minilora.io import write_atomically

    content = {"format": FORMAT, "version": VERSION, "request": req, **body,
               "provenance": {k: v for k, v in provenance.items() if k not in ("origin", "run")}}
    # in the order given (a record's keys as its maker wrote them); the checksum is over the canonical, sorted form
    text = json.dumps({**content, "checksum": sha256(canonical(content))}, indent=1) + "\n"
    write_atomically({**(first or {}), meta_path: lambda tmp: Path(tmp).write_text(text)})


NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _encode(value):
    """``value`` as strict JSON holds it: a NaN or infinity as ``{"float": "nan"}`` (``"inf"``, ``"-inf"``), tuples
    as lists, NumPy scalars as Python's."""
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return {"float": str(value)}
    return value


def _decode(value):
    """``_encode``'s inverse (tuples come back as lists)."""
    if isinstance(value, dict):
        if value.keys() == {"float"} and value["float"] in NONFINITE:
            return NONFINITE[value["float"]]
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _floats(figures: dict) -> dict:
    return {k: float(v) for k, v in figures.items()}
