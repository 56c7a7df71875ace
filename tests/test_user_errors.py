"""Every entry point with the common mistakes: one block naming the file or field and what to
do, exit status 2, no traceback; a bug keeps its traceback (exit 1)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import write_checkpoint
from vertex_jax.cli import EXIT_USER_ERROR, user_errors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from conftest import write_png_cohort

    folder = tmp_path_factory.mktemp("cohort")
    write_png_cohort(folder, 3)
    return folder


def _entry(name: str):
    return importlib.import_module(f"vertex_jax.{name}.__main__").main


# (entry point, arguments with {run}/{tmp}/{images} filled in, what the block must name)
CASES = {
    "predict-missing-checkpoint": ("predict", ["--checkpoint", "{tmp}/no_run", "--input", "{images}/images",
                                               "--out", "{tmp}/s.csv"], ["{tmp}/no_run", "finished training run"]),
    "predict-missing-input": ("predict", ["--checkpoint", "{run}", "--input", "{tmp}/nothing",
                                          "--out", "{tmp}/s.csv"], ["{tmp}/nothing", "check the path"]),
    "predict-no-rows-of-split": ("predict", ["--checkpoint", "{run}", "--input", "{images}/manifest.csv",
                                             "--split", "X", "--out", "{tmp}/s.csv", "--no-progress"],
                                 ["split 'X'", "{images}/manifest.csv"]),
    "evaluate-not-a-run": ("evaluate", ["--workdir", "{tmp}"], ["{tmp}", "finished training run"]),
    "evaluate-missing-scores": ("evaluate", ["--scores", "{tmp}/scores.csv", "--out", "{tmp}/e"],
                                ["{tmp}/scores.csv", "file not found"]),
    "export-missing-checkpoint": ("export", ["--checkpoint", "{tmp}/no_run", "--out", "{tmp}/x"],
                                  ["{tmp}/no_run", "finished training run"]),
    "calibrate-not-a-run": ("calibrate", ["--workdir", "{tmp}/no_run"], ["{tmp}/no_run"]),
    "manifest-not-a-folder": ("manifest", ["{tmp}/nothing", "--out", "{tmp}/m.csv"], ["{tmp}/nothing is not a folder"]),
    "validate-not-a-run": ("validate", ["--workdir", "{tmp}/no_run", "--out", "{tmp}/v"], ["{tmp}/no_run"]),
    "prognosis-both-files-missing": ("prognosis", ["--scores", "{tmp}/s.csv", "--followup", "{tmp}/f.csv",
                                                   "--out", "{tmp}/p"], ["{tmp}/s.csv", "{tmp}/f.csv"]),
    "synthetic-bad-setting": ("synthetic", ["--num-patients", "0", "--out", "{tmp}/c"],
                              ["invalid setting: num_patients must be >= 1"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_common_mistake_is_one_block_and_exit_2(case, run, images, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VERTEX_TRACEBACK", raising=False)
    name, args, named = CASES[case]
    fill = {"run": str(run), "tmp": str(tmp_path), "images": str(images)}
    status = user_errors(_entry(name))([a.format(**fill) for a in args])
    err = capsys.readouterr().err
    assert status == EXIT_USER_ERROR, err
    assert err.startswith("error: ") and err.count("error: ") == 1 and "Traceback" not in err
    assert "what to do: " in err and "--verbosity=1" in err
    for text in named:
        assert text.format(**fill) in err, (text, err)


def test_verbosity_shows_the_traceback_and_a_bug_keeps_it(tmp_path, monkeypatch, capsys):
    from vertex_jax.errors import MissingInputError
    from vertex_jax.predict import __main__ as predict

    args = ["--checkpoint", str(tmp_path / "none"), "--input", str(tmp_path), "--out", str(tmp_path / "s.csv")]
    monkeypatch.setenv("VERTEX_TRACEBACK", "1")
    with pytest.raises(MissingInputError):
        user_errors(predict.main)(args)
    monkeypatch.delenv("VERTEX_TRACEBACK")
    monkeypatch.setattr(predict, "_backend", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # not a user error: the traceback stays
        user_errors(predict.main)(args)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flag, named", [
    ("--config.optim.lrr=1", "unknown config field --config.optim.lrr; closest: optim.lr"),
    ("--config=nope.py", "config file nope.py not found"),
])
def test_the_training_command_line_is_checked_from_any_directory(flag, named, tmp_path):
    """absl's own parsing of ``vertex_jax.main``: a mistyped field or a missing config file
    is one block (exit 2); the shipped config is found by name outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VERTEX_TRACEBACK")}
    proc = subprocess.run([sys.executable, "-m", "vertex_jax.main", "--config=xray:tiny", flag,
                           f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and named in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing started
