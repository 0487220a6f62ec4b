"""The LLaMA twin of the toy base (claim 13): RMSNorm, RoPE, SwiGLU and grouped-query attention in
place of GPT-2's block, with about the same parameter count (844,928 against 842,496), pre-trained
on the same bytes with the same steps, schedule and seed (``minilora pretrain --arch llama``;
``minilora/checkpoints/llama_base``), fine-tuned on the same tasks by the same code (``gpt.py``).

PEFT's default targets for LLaMA are q_proj and v_proj; "every linear layer" is attention and MLP.
"""

from minilora.experiments.bases.gpt import GPTBase

BASE = GPTBase(
    name="llama", arch="llama", short="LLaMA", title="the LLaMA twin of the toy GPT (0.84M parameters, byte-level)",
    in_text="the LLaMA twin", peft_target="q_proj+v_proj", paper_target="q_proj+v_proj", all_target="llama-all",
    tuned_targets={"cls": ("q_proj+v_proj",), "code": ("q_proj+v_proj",)})
