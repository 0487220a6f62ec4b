"""The authors minilora cites are spelled as on their papers.

Every citation in README.md, CITATION.cff, docs/, notebooks/, minilora/, benchmarks/ and
tests/ -- "Hu et al., 2021", "(Kalajdzievski, 2023)", "Dettmers, Pagnoni, Holtzman,
Zettlemoyer (2023)", "Kingma & Ba, 2015" -- names only authors of AUTHORS below, each
spelled as on the paper it is cited for; and no capitalised word anywhere is a near miss
of one of those names ("Kalajdzievas" for Kalajdzievski). A new citation adds its authors
here, copied from the paper.
"""

import difflib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# family name, as on the paper -> the paper(s) it is cited for
AUTHORS = {
    "Aghajanyan": "Intrinsic Dimensionality Explains the Effectiveness of Language Model Fine-Tuning (2020)",
    "Ainslie": "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints (2023)",
    "Al-Rfou": "The Power of Scale for Parameter-Efficient Prompt Tuning (2021)",
    "Allen-Zhu": "LoRA: Low-Rank Adaptation of Large Language Models (2021)",
    "Amodei": "Language Models are Unsupervised Multitask Learners (2019)",
    "Attariyan": "Parameter-Efficient Transfer Learning for NLP (2019)",
    "Ba": "Adam: A Method for Stochastic Optimization (2015); Layer Normalization (2016)",
    "Bansal": "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning (2022)",
    "Berg-Kirkpatrick": "Towards a Unified View of Parameter-Efficient Transfer Learning (2022)",
    "Chang": "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding (2019)",
    "Chen": "LoRA (2021); DoRA: Weight-Decomposed Low-Rank Adaptation (2024)",
    "Cheng": "DoRA: Weight-Decomposed Low-Rank Adaptation (2024)",
    "Child": "Language Models are Unsupervised Multitask Learners (2019)",
    "Cho": "AdapterFusion: Non-Destructive Task Composition for Transfer Learning (2021)",
    "Constant": "The Power of Scale for Parameter-Efficient Prompt Tuning (2021)",
    "Dettmers": "8-bit Optimizers via Block-wise Quantization (2022); QLoRA: Efficient Finetuning of Quantized LLMs (2023)",
    "Devlin": "BERT (2019)",
    "Elfwing": "Sigmoid-Weighted Linear Units for Neural Network Function Approximation in Reinforcement Learning (2018)",
    "Gelly": "Parameter-Efficient Transfer Learning for NLP (2019)",
    "Gesmundo": "Parameter-Efficient Transfer Learning for NLP (2019)",
    "Gimpel": "Gaussian Error Linear Units (GELUs) (2016)",
    "Gurevych": "Sentence-BERT (2019); AdapterFusion (2021)",
    "He": "Delving Deep into Rectifiers (2015); Towards a Unified View of Parameter-Efficient Transfer Learning (2022)",
    "Hendrycks": "Gaussian Error Linear Units (GELUs) (2016)",
    "Holtzman": "QLoRA: Efficient Finetuning of Quantized LLMs (2023)",
    "Houlsby": "Parameter-Efficient Transfer Learning for NLP (2019)",
    "Hu": "LoRA: Low-Rank Adaptation of Large Language Models (2021)",
    "Huang": "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning (2022)",
    "Hutter": "Decoupled Weight Decay Regularization (2019)",
    "Kalajdzievski": "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA (2023)",
    "Kamath": "AdapterFusion (2021)",
    "Kingma": "Adam: A Method for Stochastic Optimization (2015)",
    "Laroussilhe": "Parameter-Efficient Transfer Learning for NLP (2019), Quentin de Laroussilhe",
    "Lee": "BERT (2019)",
    "Lester": "The Power of Scale for Parameter-Efficient Prompt Tuning (2021)",
    "Lewis": "8-bit Optimizers via Block-wise Quantization (2022)",
    "Li": "LoRA (2021); Prefix-Tuning: Optimizing Continuous Prompts for Generation (2021)",
    "Liang": "Prefix-Tuning: Optimizing Continuous Prompts for Generation (2021)",
    "Liu": "Few-Shot Parameter-Efficient Fine-Tuning ... (2022); DoRA (2024)",
    "Loshchilov": "Decoupled Weight Decay Regularization (2019)",
    "Luan": "Language Models are Unsupervised Multitask Learners (2019)",
    "Ma": "Towards a Unified View of Parameter-Efficient Transfer Learning (2022)",
    "Meng": "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models (2024)",
    "Mohta": "Few-Shot Parameter-Efficient Fine-Tuning ... (2022)",
    "Molchanov": "DoRA (2024)",
    "Muqeeth": "Few-Shot Parameter-Efficient Fine-Tuning ... (2022)",
    "Neubig": "Towards a Unified View of Parameter-Efficient Transfer Learning (2022)",
    "Pagnoni": "QLoRA (2023)",
    "Pfeiffer": "AdapterHub (2020); AdapterFusion (2021)",
    "Press": "Using the Output Embedding to Improve Language Models (2017)",
    "Radford": "Language Models are Unsupervised Multitask Learners (2019)",
    "Raffel": "Few-Shot Parameter-Efficient Fine-Tuning ... (2022)",
    "Reimers": "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks (2019)",
    "Rücklé": "AdapterFusion (2021)",
    "Sennrich": "Root Mean Square Layer Normalization (2019)",
    "Shazeer": "GLU Variants Improve Transformer (2020)",
    "Shen": "LoRA (2021)",
    "Shleifer": "8-bit Optimizers via Block-wise Quantization (2022)",
    "Su": "RoFormer: Enhanced Transformer with Rotary Position Embedding (2021)",
    "Sutskever": "Language Models are Unsupervised Multitask Learners (2019)",
    "Tam": "Few-Shot Parameter-Efficient Fine-Tuning ... (2022)",
    "Toutanova": "BERT (2019)",
    "Touvron": "LLaMA: Open and Efficient Foundation Language Models (2023)",
    "Vaswani": "Attention Is All You Need (2017)",
    "Wallis": "LoRA (2021)",
    "Wang": "MiniLM (2020); LoRA (2021); DoRA (2024)",
    "Wolf": "Using the Output Embedding to Improve Language Models (2017)",
    "Wu": "Google's Neural Machine Translation System (2016); Language Models are Unsupervised Multitask Learners (2019)",
    "Xiong": "On Layer Normalization in the Transformer Architecture (2020)",
    "Yin": "DoRA (2024)",
    "Zettlemoyer": "8-bit Optimizers via Block-wise Quantization (2022); QLoRA (2023)",
    "Zhang": "Root Mean Square Layer Normalization (2019)",
    "Zhou": "Towards a Unified View of Parameter-Efficient Transfer Learning (2022)",
    "Asano": "VeRA: Vector-based Random Matrix Adaptation (2024)",
    "Blankevoort": "VeRA: Vector-based Random Matrix Adaptation (2024)",
    "Bukharin": "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (2023)",
    "Büyükakyüz": "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models (2024)",
    "Caccia": "Towards Modular LLMs by Building and Reusing a Library of LoRAs (2024)",
    "Ceze": "Punica: Multi-Tenant LoRA Serving (2023)",
    "Dušek": "The E2E Dataset: New Challenges for End-to-End Generation (2017)",
    "Edalati": "KronA: Parameter Efficient Tuning with Kronecker Adapter (2022)",
    "Gao": "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation (2024)",
    "Ghosh": "LoRA+: Efficient Low Rank Adaptation of Large Models (2024)",
    "Gong": "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation (2024)",
    "Halko": "Finding Structure with Randomness: Probabilistic Algorithms for Constructing Approximate Matrix Decompositions (2011)",
    "Hayou": "LoRA+: Efficient Low Rank Adaptation of Large Models (2024)",
    "Hsieh": "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation (2024)",
    "Hyeon-Woo": "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning (2022)",
    "Karampatziakis": "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (2023)",
    "Kopiczko": "VeRA: Vector-based Random Matrix Adaptation (2024)",
    "Krishnamurthy": "Punica: Multi-Tenant LoRA Serving (2023)",
    "Martinsson": "Finding Structure with Randomness (2011)",
    "Micikevicius": "Mixed Precision Training (2018)",
    "Novikova": "The E2E Dataset: New Challenges for End-to-End Generation (2017)",
    "Oh": "Navigating Text-To-Image Customization (2024); FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning (2022)",
    "Ostapenko": "Towards Modular LLMs by Building and Reusing a Library of LoRAs (2024)",
    "Pereira": "Towards Modular LLMs by Building and Reusing a Library of LoRAs (2024)",
    "Post": "A Call for Clarity in Reporting BLEU Scores (2018)",
    "Rieser": "The E2E Dataset: New Challenges for End-to-End Generation (2017)",
    "Roux": "Towards Modular LLMs ... (2024), Nicolas Le Roux",
    "Sheng": "S-LoRA: Serving Thousands of Concurrent LoRA Adapters (2023)",
    "Sordoni": "Towards Modular LLMs by Building and Reusing a Library of LoRAs (2024)",
    "Tropp": "Finding Structure with Randomness (2011)",
    "Yang": "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation (2024)",
    "Ye": "Punica: Multi-Tenant LoRA Serving (2023), Zihao Ye",
    "Ye-Bin": "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning (2022)",
    "Yeh": "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation (2024)",
    "Yu": "LoRA+: Efficient Low Rank Adaptation of Large Models (2024), Bin Yu",
    "Zhao": "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (2023), Tuo Zhao",
    "Zheng": "S-LoRA: Serving Thousands of Concurrent LoRA Adapters (2023), Lianmin Zheng",
}

NAME = r"[A-Z][a-zà-ÿ]+(?:-[A-Z][a-zà-ÿ]+)?"
# one or more names, joined by ", ", " & " or " and ", then "et al." or not, then a year
CITATION = re.compile(rf"((?:{NAME}(?:,\s+and\s+|,\s+|\s+&\s+|\s+and\s+))*{NAME})(?:\s+et al\.)?,?\s+\(?((?:19|20)\d\d)\b")
SEPARATOR = re.compile(r",\s+and\s+|,\s+|\s+&\s+|\s+and\s+")


def texts() -> dict:
    """Every file that cites, as text: a notebook's cells joined."""
    files = [ROOT / "README.md", ROOT / "CITATION.cff"] + sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "notebooks").glob("*.ipynb"))
    files += [p for folder in ("minilora", "benchmarks", "tests") for p in sorted((ROOT / folder).rglob("*.py"))
              if p != Path(__file__).resolve()]  # this file names the papers, and misspells on purpose
    found = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
        found[path.relative_to(ROOT).as_posix()] = text
    return found


def cited_names(text: str) -> list:
    return [name for match in CITATION.finditer(text) for name in SEPARATOR.split(match.group(1))]


def near_misses(text: str) -> list:
    """(word, name) for each capitalised word within a letter or two of a long cited name."""
    long_names = [name for name in AUTHORS if len(name) >= 6]
    misses = set()
    for word in set(re.findall(r"\b[A-Z][a-zà-ÿ]{5,}(?:-[A-Z][a-zà-ÿ]+)?\b", text)):
        for name in long_names:
            if word not in (name, name + "s") and difflib.SequenceMatcher(None, word.lower(), name.lower()).ratio() >= 0.85:
                misses.add((word, name))
    return sorted(misses)


def test_the_checks_catch_a_misspelt_author():
    text = "rsLoRA (Kalajdzievas, 2023) scales by alpha / sqrt(r); Dettmers, Pagnoni and Holtzmann (2023)."
    assert cited_names(text) == ["Kalajdzievas", "Dettmers", "Pagnoni", "Holtzmann"]
    assert near_misses(text) == [("Holtzmann", "Holtzman"), ("Kalajdzievas", "Kalajdzievski")]
    assert cited_names("Adam (Kingma & Ba, 2015), Hu et al. (2021), Li and Liang (2021)") == ["Kingma", "Ba", "Hu", "Li", "Liang"]


@pytest.mark.parametrize("path, text", sorted(texts().items()), ids=sorted(texts()))
def test_cited_authors_are_spelled_as_in_their_papers(path, text):
    unknown = sorted(set(cited_names(text)) - set(AUTHORS))
    assert not unknown, (f"{path} cites {unknown}: not in tests/test_citations.py's AUTHORS "
                         f"(a misspelling, or a new citation: add its authors as spelled on the paper)")
    assert not near_misses(text), f"{path}: a name spelled unlike its paper: {near_misses(text)}"
