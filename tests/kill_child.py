"""The child process of the save-kill tests (``test_save_kills.py``): save over and over until killed.

    python kill_child.py KIND FOLDER MODE

KIND is ``model`` (GPT.save_pretrained), ``adapter`` (PeftModel.save_pretrained of a LoRA
adapter) or ``checkpoint`` (train.save_checkpoint into FOLDER/training-checkpoint.safetensors).
Save number k writes every weight as k / 1000 and records k in the config too (the dropout
rate, ``lora_alpha``, the checkpoint's metadata), so a load can tell which save each file
came from. MODE ``loop`` prints "ready" and saves k = 1, 2, ... until the parent's SIGKILL;
MODE ``between`` makes one save and kills itself right after its first rename.
"""

import os
import signal
import sys

import numpy as np

from minilora.models import GPT, GPTConfig
from minilora.peft import LoraConfig, get_peft_model
from minilora.train import save_checkpoint

# peft_helpers' tiny GPT-2, built here without importing torch (a child starts in a second, not five)
TINY = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)


def version(kind: str, k: int):
    """The model or adapter of save number k, ready to save."""
    model = GPT(GPTConfig(**TINY, dropout=(k % 500) / 1000), dtype=np.float32).eval()
    if kind == "adapter":
        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=k, target_modules=["c_attn"], init_lora_weights=False))
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data[...] = np.float32(k / 1000)
        return model
    for p in model.parameters():
        p.data[...] = np.float32(k / 1000)
    return model


def save(kind: str, folder: str, k: int, model) -> None:
    if kind == "checkpoint":
        save_checkpoint(model, os.path.join(folder, "training-checkpoint.safetensors"), metadata={"version": k})
    else:
        model.save_pretrained(folder)


def main() -> None:
    kind, folder, mode = sys.argv[1:4]
    if mode == "between":
        model = version(kind, 1)
        real_replace = os.replace

        def replace_then_die(src, dst):
            real_replace(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)  # after the first of the save's two renames

        os.replace = replace_then_die
        save(kind, folder, 1, model)
        return
    models = [version(kind, k) for k in (1, 2, 3)]
    print("ready", flush=True)
    k = 0
    while True:
        k += 1
        model = models[k % 3]
        save(kind, folder, [1, 2, 3][k % 3], model)


if __name__ == "__main__":
    main()
