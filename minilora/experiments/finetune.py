"""The old import path of the toy base's fine-tuning, kept for the course notebooks (01-06) until they
move to the new one: ``minilora.experiments.bases.gpt`` (the data, a run) and ``minilora.experiments.runs``
(the run specification). Nothing here but names from there."""

from minilora.experiments.bases.gpt import (CODE_BLOCK, ClassificationData, CodeData, Environment, finetune, fresh_model,
                                            load_environment, lora_config)
from minilora.experiments.runs import RunResult, RunSpec, trained_state

__all__ = ["CODE_BLOCK", "ClassificationData", "CodeData", "Environment", "RunResult", "RunSpec", "finetune", "fresh_model",
           "load_environment", "lora_config", "trained_state"]
