"""Parameter-efficient fine-tuning methods behind one interface, as Hugging Face PEFT.

    from minilora.peft import LoraConfig, get_peft_model
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["c_attn"]))
    model.print_trainable_parameters()
    model.save_pretrained("my-adapter")          # PEFT's files: peft.PeftModel.from_pretrained reads them

Each method lives in its own module; ``PeftModel`` (``model.py``) wraps them all
and reads/writes PEFT's adapter files (``files.py``).
"""

from minilora.lora import LoraConfig, LoRALinear, LoraModel  # noqa: F401  (LoRA: minilora/lora.py)
from minilora.peft.adapters import BottleneckConfig  # noqa: F401  (bottleneck adapters: adapters.py)
from minilora.peft.ia3 import IA3Config, IA3Model  # noqa: F401  ((IA)^3: ia3.py; DoRA is LoraConfig(use_dora=True))
from minilora.peft.model import PeftModel, get_peft_model  # noqa: F401
from minilora.peft.prefix_tuning import PrefixEncoder, PrefixTuningConfig, PrefixTuningModel  # noqa: F401
from minilora.peft.prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningModel  # noqa: F401

__all__ = ["LoraConfig", "LoRALinear", "LoraModel", "PeftModel", "get_peft_model", "BottleneckConfig",
           "PromptTuningConfig", "PromptEmbedding", "PromptTuningModel",
           "PrefixTuningConfig", "PrefixEncoder", "PrefixTuningModel", "IA3Config", "IA3Model"]
