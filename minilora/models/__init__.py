"""Models: GPT-2 (``gpt.py``), LLaMA (``llama.py``) and Hugging Face checkpoint I/O (``hf.py``, ``llama_hf.py``)."""

from minilora.models.gpt import GPT, PRESETS, GPTConfig, KVCache
from minilora.models.hf import CheckpointError, from_transformers, to_transformers
from minilora.models.llama import LlamaConfig, LlamaForCausalLM

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "CheckpointError", "to_transformers", "from_transformers",
           "LlamaConfig", "LlamaForCausalLM"]
