"""The old import path of claim 12's helpers, kept for the course notebooks (01-06) until they move to
``minilora.experiments.claims.quantization``. A QLoRA run is now any run with ``RunSpec(quantized=True)``;
the two functions below keep the old names for it."""

from minilora.experiments.bases import gpt
from minilora.experiments.claims.quantization import SCHEMES, quantization_errors, quantized_copy, stored_bytes


def qlora_model(spec, base):
    """The model a LoRA run on the NF4 base starts from (``gpt.fresh_model`` of ``spec`` quantized)."""
    return gpt.fresh_model(spec.replace(quantized=True), base)


def qlora_finetune(spec, base, data, progress: bool = False):
    """A LoRA run on the NF4 base (``gpt.finetune`` of ``spec`` quantized)."""
    return gpt.finetune(spec.replace(quantized=True), base, data, progress)


__all__ = ["SCHEMES", "qlora_finetune", "qlora_model", "quantization_errors", "quantized_copy", "stored_bytes"]
