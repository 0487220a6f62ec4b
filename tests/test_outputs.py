"""Output folders: what ``verify --out`` and ``pretrain --out`` may write into, and the shipped bases.

``minilora.io``'s rule: a command writes only into a folder that is new, empty, or marked
(``.minilora-output.json``) as its own earlier output; anything else is refused, naming the
folder, with nothing touched; folders and files get the modes the umask gives; a killed run
leaves nothing the next run does not remove. ``pretrain`` never writes into the installed
package, and ``load_base`` checks the shipped weights' sha256. Command-line mistakes are one
line on stderr, never a traceback.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minilora import cli, io, pretrain, verify
from minilora.errors import OutputFolderError, WeightsError
from minilora.experiments.core import HOLDS

ROOT = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict:
    """Every entry under ``folder``: a file's bytes and mode, a folder's mode."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (path.read_bytes() if path.is_file() else None, st.st_mode)
    return out


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class InstantClaim:
    """A claim that measures nothing and renders one plot: the folder handling without the minutes."""

    KEY, NUMBER, BASES = "params", 1, ("toy",)
    TITLE, CLAIM, MEASURED = "t", "c", "m"

    @staticmethod
    def measure(base, session):
        return {"n": 1}

    @staticmethod
    def verdict(figures):
        return {"verdict": HOLDS, "parts": {}, "thresholds": {}}

    @staticmethod
    def render(figures, verdict, plot, quick):
        import matplotlib.pyplot as plt

        return {"figure": "f", "body": "b", "plots": [plot(plt.figure(), "plot.png")]}


@pytest.fixture
def fake_claims(monkeypatch):
    """``verify`` with one instant claim that writes a plot."""
    monkeypatch.setattr(verify, "claim_modules", lambda: {"params": InstantClaim})


def run_cli(argv, capsys) -> tuple:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err


# ---------------------------------------------------------------------------
# verify --out
# ---------------------------------------------------------------------------


def test_verify_refuses_a_folder_that_is_not_a_report_and_touches_nothing(tmp_path, monkeypatch, capsys, fake_claims):
    """The issue's case: ``verify --out .`` inside a project deleted main.py and .git."""
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "main.py").write_text("print('mine')\n")
    before = tree(project)
    monkeypatch.chdir(project)
    code, err = run_cli(["verify", "--out", ".", "--no-progress"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"refusing to write a verify report into {project}" in err and "not empty" in err
    assert tree(project) == before
    assert sorted(os.listdir(tmp_path)) == ["project"]  # no partial folder beside it either


def test_verify_writes_a_new_folder_with_the_umask_s_modes_and_replaces_its_own_report(tmp_path, fake_claims):
    out = tmp_path / "report"
    verify.verify(out, log=lambda *a: None)
    assert (out / "README.md").exists() and (out / io.OUTPUT_MARKER).exists()
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask()  # was 0o700 (mkdtemp's)
    assert (out / "README.md").stat().st_mode & 0o777 == 0o666 & ~umask()
    (out / "stale.png").write_bytes(b"from an older run")  # a plot a later run no longer makes
    verify.verify(out, log=lambda *a: None)  # the folder is an earlier report: replaced whole
    assert not (out / "stale.png").exists() and (out / "plot.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["report"]


def test_verify_writes_into_an_empty_folder_and_refuses_another_command_s_output(tmp_path, fake_claims):
    empty = tmp_path / "empty"
    empty.mkdir()
    verify.verify(empty, log=lambda *a: None)
    assert (empty / "README.md").exists()
    run = tmp_path / "run"
    io.claim_output_folder(run, pretrain.RUN)
    (run / "model.safetensors").write_bytes(b"weights")
    before = tree(run)
    with pytest.raises(OutputFolderError, match="it holds minilora's pretrain run, not a verify report"):
        verify.verify(run, log=lambda *a: None)
    assert tree(run) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        verify.verify(a_file, log=lambda *a: None)
    assert a_file.read_text() == "mine"


def test_a_failed_run_leaves_nothing_and_a_killed_run_s_leftovers_go_with_the_next_run(tmp_path, monkeypatch, fake_claims):
    out = tmp_path / "report"
    with pytest.raises(RuntimeError):
        with io.replacing_output_folder(out, verify.REPORT) as staging:
            (staging / "half.png").write_bytes(b"x")
            raise RuntimeError("a claim failed")
    assert os.listdir(tmp_path) == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".report.partial-{dead.pid}-0123abcd"  # what a SIGKILLed run leaves
    leftover.mkdir()
    (leftover / io.OUTPUT_MARKER).write_text('{"kind": "verify report"}')
    (leftover / "half.png").write_bytes(b"x")
    foreign = tmp_path / f".report.partial-{dead.pid}-ffffffff"  # the same name, not ours: kept
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    verify.verify(out, log=lambda *a: None)
    assert sorted(os.listdir(tmp_path)) == [foreign.name, "report"]


def test_sigterm_during_verify_leaves_no_partial_folder(tmp_path):
    """SIGTERM ends the command through its clean-up (the partial report folder removed), not mid-air."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minilora", "verify", "--quick", "--only", "params", "--bases", "toy",
                             "--out", "vt", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".vt.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "verify ended before writing anything"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_only_with_a_trailing_comma_runs_the_claim_and_an_empty_list_is_one_line(tmp_path, capsys, fake_claims):
    assert verify.names("params, ,rank,") == ["params", "rank"]
    code, _ = run_cli(["verify", "--only", "params,", "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 0  # was: unknown claims ['']
    code, err = run_cli(["verify", "--only", ",", "--out", str(tmp_path / "s")], capsys)
    assert code == 1 and err.count("\n") == 1 and "--only ',' names no claim" in err
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------
# pretrain --out, and the shipped bases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--out", "notes.txt"], "notes.txt is a file, not a folder"),
    (["--out", str(pretrain.BASE_DIR)], "is inside the installed minilora package"),
    (["--out", str(pretrain.PACKAGE_DIR / "elsewhere")], "is inside the installed minilora package"),
])
def test_pretrain_argument_errors_are_one_line_and_create_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    shipped = {p.name: p.read_bytes() for p in pretrain.BASE_DIR.iterdir()}
    code, err = run_cli(["pretrain", "--no-progress", *argv], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"
    assert {p.name: p.read_bytes() for p in pretrain.BASE_DIR.iterdir()} == shipped
    assert not (pretrain.PACKAGE_DIR / "elsewhere").exists()


@pytest.fixture
def quick_pretrain(monkeypatch):
    """pretrain() in seconds: one step of a batch of 2, validated on one window."""
    from minilora.data import eval_batches

    monkeypatch.setattr(pretrain, "prose_val_loss", lambda model, corpus=None, batch_size=32: 1.0)
    monkeypatch.setattr(pretrain, "eval_batches", lambda data, b, T, max_batches=None: eval_batches(data, b, T, max_batches=1))
    return lambda **kw: pretrain.pretrain(max_steps=1, batch_size=2, progress=False, **kw)


def test_pretrain_without_out_writes_to_the_working_folder_and_says_so(tmp_path, monkeypatch, quick_pretrain):
    monkeypatch.chdir(tmp_path)
    said = []
    shipped = hashlib.sha256((pretrain.BASE_DIR / "model.safetensors").read_bytes()).hexdigest()
    record = quick_pretrain(log=said.append)
    assert record["out"] == str(tmp_path / "pretrain-gpt")
    assert said == [f"pretrain: no output folder given; writing to {tmp_path / 'pretrain-gpt'}"]
    assert (tmp_path / "pretrain-gpt" / "model.safetensors").exists()
    assert hashlib.sha256((pretrain.BASE_DIR / "model.safetensors").read_bytes()).hexdigest() == shipped
    assert shipped == pretrain.SHIPPED_SHA256["base"]


class Interrupted(Exception):
    pass


def test_pretrain_resumes_from_the_same_folder_spelled_another_way(tmp_path, monkeypatch, quick_pretrain):
    """A run stopped after its last checkpoint, then resumed as ``$PWD/pt2`` instead of ``pt2``: it continues
    (it was refused, advising to delete the checkpoint and lose its steps)."""
    monkeypatch.chdir(tmp_path)

    def stop(*args, **kwargs):
        raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(pretrain.GPT, "save_pretrained", stop)
        with pytest.raises(Interrupted):
            quick_pretrain(out="pt2")
    assert (tmp_path / "pt2" / pretrain.CHECKPOINT_NAME).exists()
    record = quick_pretrain(out=tmp_path / "pt2")
    assert record["train"]["max_steps"] == 1 and not (tmp_path / "pt2" / pretrain.CHECKPOINT_NAME).exists()


def test_load_base_refuses_a_shipped_base_whose_sha256_changed(tmp_path, monkeypatch):
    """The issue's case: `pretrain --steps 2` overwrote the shipped base, and load_base() used it silently."""
    fake = tmp_path / "checkpoints" / "base"
    fake.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (fake / name).write_bytes((pretrain.BASE_DIR / name).read_bytes())
    monkeypatch.setattr(pretrain, "CHECKPOINTS", tmp_path / "checkpoints")
    assert pretrain.load_base(path=fake).config == pretrain.BASE_CONFIG  # the very file: loads
    data = bytearray((fake / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (fake / "model.safetensors").write_bytes(bytes(data))
    got = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(WeightsError, match=rf"{fake / 'model.safetensors'}: sha256 {got} differs from the expected "
                                           rf"{pretrain.SHIPPED_SHA256['base']}"):
        pretrain.load_base(path=fake)
    mine = tmp_path / "mine"
    shutil.copytree(fake, mine)
    assert pretrain.load_base(path=mine).config == pretrain.BASE_CONFIG  # a base of the user's own: nothing to compare


def test_every_shipped_base_is_recorded_and_matches():
    shipped = sorted(p.name for p in pretrain.CHECKPOINTS.iterdir() if (p / "model.safetensors").exists())
    assert shipped == sorted(pretrain.SHIPPED_SHA256)
    for name in shipped:
        pretrain.check_shipped(pretrain.CHECKPOINTS / name)
