"""The toy base: minilora's own GPT-2 (0.84M parameters, byte-level), pre-trained on prose by
``minilora pretrain`` (docs/base_model.md) and shipped in ``minilora/checkpoints/base``.

Everything a GPT base does is in ``gpt.py``; this file names the checkpoint and the target sets:
LoRA is tuned on Wq+Wv and on the four attention matrices (classification) or on every matrix
(code), PEFT's own setting on GPT-2 is the fused ``c_attn``.
"""

from minilora.experiments.bases.gpt import GPTBase

BASE = GPTBase(
    name="toy", arch="gpt", short="toy", title="the toy GPT (minilora's own, 0.84M parameters, byte-level)",
    in_text="the toy base", peft_target="c_attn", paper_target="Wq+Wv", all_target="all",
    tuned_targets={"cls": ("Wq+Wv", "attn"), "code": ("Wq+Wv", "all")}, counts_published=True)
