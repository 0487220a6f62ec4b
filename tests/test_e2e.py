"""The E2E NLG task (minilora.tasks.e2e_task) and one E2E run (minilora.experiments.bases.e2e).

Oracles: the data files themselves (read with the csv module here), their recorded sha256, and
sacrebleu re-scoring a run's output file.
"""

import csv
import shutil

import numpy as np
import pytest

from minilora.errors import MismatchError
from minilora.tasks import E2E_DIR, E2E_SHA256, IGNORE_INDEX, SEPARATOR, E2ETask, e2e_task

pytest.importorskip("sacrebleu")


@pytest.fixture(scope="module")
def task():
    return e2e_task()


def rows(name):
    with open(E2E_DIR / name, encoding="utf-8", newline="") as f:
        return [(r["mr"], r["ref"]) for r in csv.DictReader(f)]


def test_the_development_set_is_split_by_mr_and_the_test_set_grouped_by_mr(task):
    dev, test = rows("devset.csv"), rows("testset_w_refs.csv")
    train_mrs, val_mrs = {mr for mr, _ in task.train}, {mr for mr, _ in task.val}
    assert not train_mrs & val_mrs  # no MR on both sides
    assert (len(train_mrs), len(val_mrs), len(task.train), len(task.val)) == (492, 55, 4153, 519)
    assert sorted(task.train + task.val) == sorted(dev)  # every pair once
    # the 630 test MRs in the order they first appear, each with all its references in file order
    assert len(task.test_mrs) == 630 and task.test_mrs[0] == test[0][0]
    assert list(task.test_mrs) == list(dict.fromkeys(mr for mr, _ in test))
    assert sum(len(r) for r in task.test_refs) == len(test) == 4693
    i = 17
    assert list(task.test_refs[i]) == [ref for mr, ref in test if mr == task.test_mrs[i]]
    assert any("£" in ref for refs in task.test_refs for ref in refs)  # UTF-8, read as such


def test_a_batch_trains_on_the_reference_and_the_end_marker_only(task):
    (mr, ref), other = task.train[0], task.train[1]
    x, targets = task.batch([(mr, ref), other], block_size=512)
    prompt = E2ETask.prompt(mr)
    assert prompt == mr.encode() + SEPARATOR and E2ETask.row(mr, ref) == prompt + ref.encode() + b"\n"
    marked = targets[0] != IGNORE_INDEX
    assert bytes(targets[0][marked].astype(np.uint8)) == ref.encode() + b"\n"
    assert np.flatnonzero(marked)[0] == len(prompt) - 1  # the separator's last byte predicts the first
    assert bytes(x[0, : len(prompt)].astype(np.uint8)) == prompt
    # a row longer than the block is cut to it
    x, targets = task.batch([(mr, ref)], block_size=60)
    assert x.shape == (1, 60) and bytes(targets[0][targets[0] != IGNORE_INDEX].astype(np.uint8)) == \
        E2ETask.row(mr, ref)[len(prompt) : 61]


def test_a_data_file_that_differs_is_refused_naming_it_and_both_hashes(tmp_path):
    for name in E2E_SHA256:
        shutil.copy(E2E_DIR / name, tmp_path / name)
    changed = tmp_path / "testset_w_refs.csv"
    data = bytearray(changed.read_bytes())
    data[-3] ^= 1
    changed.write_bytes(bytes(data))
    with pytest.raises(MismatchError, match=rf"testset_w_refs\.csv: sha256 [0-9a-f]{{64}}, expected {E2E_SHA256[changed.name]}"):
        e2e_task(folder=tmp_path)
    assert changed.read_bytes() == bytes(data)  # left as it was
    with pytest.raises(ValueError, match=r"val_mrs must be an int in \[1, 546\]"):
        e2e_task(val_mrs=547)


def test_a_quick_run_writes_one_line_per_mr_that_sacrebleu_rescores(task, tmp_path):
    import sacrebleu

    from minilora.experiments.bases.e2e import E2ESpec, QUICK, run_e2e, write_generations
    from minilora.nlg_metrics import reference_streams

    result = run_e2e(E2ESpec(method="lora", size=4, steps=2, quick=True), task=task)
    n = QUICK["test_mrs"]
    assert result["trainable"] == 4 * 2 * 4 * (128 + 128)  # 4 layers x (A: 2r x C, B: 2C x r) at r = 4: Wq and Wv
    assert result["steps"] == 2 and len(result["train_losses"]) == 2 and np.isfinite(result["val_loss"])
    assert len(result["generations"]) == n and all("\n" not in g for g in result["generations"])
    write_generations(tmp_path / "out.txt", result["generations"])
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[:-1]
    bleu = sacrebleu.corpus_bleu(lines, reference_streams(task.test_refs[:n]))
    assert bleu.score == pytest.approx(result["scores"]["bleu"]["score"], rel=1e-12)
    with pytest.raises(ValueError, match="generation 1 holds a line break"):
        write_generations(tmp_path / "bad.txt", ["a", "b\rc"])
    with pytest.raises(ValueError, match="runs on the GPT base only"):
        E2ESpec(base="llama", method="prefix", size=8)
