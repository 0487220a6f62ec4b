"""Models: GPT-2 (``gpt.py``) and Hugging Face checkpoint I/O (``hf.py``)."""

from minilora.models.gpt import GPT, PRESETS, GPTConfig, KVCache
from minilora.models.hf import CheckpointError, from_transformers, to_transformers

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "CheckpointError", "to_transformers", "from_transformers"]
