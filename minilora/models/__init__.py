"""Models: GPT-2 (``gpt.py``), BERT (``bert.py``), LLaMA (``llama.py``), their Hugging Face checkpoint I/O
(``hf.py``, ``bert_hf.py``, ``llama_hf.py``), the real pretrained all-MiniLM-L6-v2 (``minilm.py``), and
batched greedy decoding of prompts of different lengths (``decoding.py``)."""

from minilora.models.bert import BertConfig, BertForSequenceClassification, BertModel
from minilora.models.decoding import greedy_decode
from minilora.models.gpt import GPT, PRESETS, GPTConfig, KVCache
from minilora.models.hf import CheckpointError, from_transformers, to_transformers
from minilora.models.llama import LlamaConfig, LlamaForCausalLM
from minilora.models.minilm import BertTokenizer, ModelNotInstalledError, load_minilm, minilm_folder

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "CheckpointError", "to_transformers", "from_transformers",
           "BertConfig", "BertModel", "BertForSequenceClassification", "BertTokenizer", "load_minilm", "minilm_folder",
           "ModelNotInstalledError", "LlamaConfig", "LlamaForCausalLM", "greedy_decode"]
