"""Parameter-efficient fine-tuning methods behind one interface, as Hugging Face PEFT.

    from minilora.peft import LoraConfig, get_peft_model
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["c_attn"]))
    model.print_trainable_parameters()
    model.save_pretrained("my-adapter")          # PEFT's files: peft.PeftModel.from_pretrained reads them

Each method lives in its own module -- ``lora.py`` (with DoRA's math in ``dora.py``, and
LoRA+'s optimizer in ``loraplus.py``), ``adalora.py``, ``vera.py``, ``lycoris.py`` (LoHa and
LoKr), ``ia3.py``, ``adapters.py``, ``prompt_tuning.py`` and ``prefix_tuning.py`` (these two
share ``prompt_learning.py``) -- and none imports another method or the wrapper.
``PeftModel`` (``model.py``) wraps them all and reads/writes PEFT's adapter files
(``files.py``). What the methods that wrap layers share is ``minilora/tuner.py``, below
this package.
"""

from minilora.peft.adalora import AdaLoraConfig, AdaLoraModel  # noqa: F401  (AdaLoRA: adalora.py)
from minilora.peft.adapters import BottleneckConfig  # noqa: F401  (bottleneck adapters: adapters.py)
from minilora.peft.ia3 import IA3Config, IA3Model  # noqa: F401  ((IA)^3: ia3.py)
from minilora.peft.lora import BASE, LoraConfig, LoRALinear, LoraModel  # noqa: F401  (DoRA is LoraConfig(use_dora=True))
from minilora.peft.loraplus import create_loraplus_optimizer  # noqa: F401  (LoRA+: loraplus.py)
from minilora.peft.lycoris import LoHaConfig, LoHaModel, LoKrConfig, LoKrModel  # noqa: F401  (LoHa, LoKr: lycoris.py)
from minilora.peft.model import PeftModel, get_peft_model  # noqa: F401
from minilora.peft.prefix_tuning import PrefixEncoder, PrefixTuningConfig, PrefixTuningModel  # noqa: F401
from minilora.peft.prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningModel  # noqa: F401
from minilora.peft.vera import VeraConfig, VeraModel  # noqa: F401  (VeRA: vera.py)

__all__ = ["LoraConfig", "LoRALinear", "LoraModel", "PeftModel", "get_peft_model", "BASE", "BottleneckConfig",
           "PromptTuningConfig", "PromptEmbedding", "PromptTuningModel",
           "PrefixTuningConfig", "PrefixEncoder", "PrefixTuningModel", "IA3Config", "IA3Model",
           "AdaLoraConfig", "AdaLoraModel", "VeraConfig", "VeraModel", "LoHaConfig", "LoHaModel", "LoKrConfig",
           "LoKrModel", "create_loraplus_optimizer"]
