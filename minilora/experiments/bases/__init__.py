"""The base models the claims are measured on: one module each, each defining ``BASE`` (``protocol.py``
says what a base provides).

``toy``     minilora's own GPT-2, 0.84M parameters, byte-level (``gpt.py`` holds what GPT bases share)
``minilm``  all-MiniLM-L6-v2, a pretrained BERT, 22.7M parameters
``llama``   the toy's LLaMA twin (claim 13)

Every module of this package that defines ``BASE`` is a base: adding one is adding a file
(docs/architecture.md shows one). ``register`` adds a base from elsewhere (a test, a notebook).
"""

from __future__ import annotations

import importlib
import pkgutil

from minilora.experiments.bases.protocol import Base, CostSetting

_REGISTERED = {}


def _found() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "BASE"):
            found[module.BASE.name] = module.BASE
    return found


def all_bases() -> dict:
    """``{name: base}``: every base of this package, and those registered."""
    return {**_found(), **_REGISTERED}


def get(name: str):
    """The base called ``name``; a ValueError naming the known ones otherwise."""
    bases = all_bases()
    if name not in bases:
        raise ValueError(f"unknown base {name!r}; bases: {', '.join(sorted(bases))}")
    return bases[name]


def register(base) -> None:
    """Add ``base`` (an object with the members of ``protocol.Base``) under ``base.name``."""
    _REGISTERED[base.name] = base


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


__all__ = ["Base", "CostSetting", "all_bases", "get", "register", "unregister"]
