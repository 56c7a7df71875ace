"""One clear message per user error (vertex_jax.cli): no traceback, what/where/what to do,
exit status 2; bugs keep their traceback; --verbosity=1 or VERTEX_TRACEBACK=1 shows it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vertex_jax import cli
from vertex_jax.cli import EXIT_USER_ERROR, explain, user_errors

REPO = Path(__file__).resolve().parents[1]


def _message(capsys, raise_it) -> str:
    """What the wrapped entry point prints on stderr; it must return the user-error status."""
    def main(argv):
        raise_it()

    assert user_errors(main)([]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("error: ") == 1
    return err


@pytest.fixture(autouse=True)
def _no_traceback_switch(monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["prog"])


def test_manifest_problems_are_one_block_with_every_problem(tmp_path, capsys):
    from vertex_jax.data.manifest import load_manifest

    (tmp_path / "m.csv").write_text("image_id,patient_id,path,domain,pvf,osteo,age,sex\n"
                                    "a,p1,x.png,xray,1,0,70,F\na,p2,y.png,xray,1,0,abc,Q\n")
    err = _message(capsys, lambda: load_manifest(tmp_path / "m.csv"))
    assert err.startswith("error: 5 problem(s) in the manifest\n")
    assert f"in: {tmp_path / 'm.csv'}" in err
    lines = err.splitlines()
    assert lines[2] == "  - missing column(s): bmi"  # missing columns first
    assert "duplicate image_id ['a'] at line(s) 2, 3" in err and "'age': not a number at line(s) 3" in err
    assert "what to do: fix these in the CSV" in err and "--verbosity=1" in err


def test_unreadable_image_points_at_skip_unreadable(tmp_path, capsys):
    from vertex_jax.data.cache import build_cache
    from vertex_jax.data.preprocess import PreprocessConfig

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    df = pd.DataFrame({"image_id": ["bad"], "path": [str(tmp_path / "bad.png")]})
    err = _message(capsys, lambda: build_cache(df, tmp_path / "cache", PreprocessConfig(canvas=(32, 16)),
                                               workers=1, progress=False))
    assert "error: cannot read an image: " in err and f"in: {tmp_path / 'bad.png'}" in err
    assert "re-run with --config.data.skip_unreadable=True to leave out unreadable images; they are listed in" in err


def test_split_smaller_than_one_batch(cached_cohort, capsys):
    from vertex_jax.data.pipeline import train_dataset

    cache, df, stats = cached_cohort
    err = _message(capsys, lambda: train_dataset(cache, df, tasks=("pvf",), stats=stats, global_batch=1000, seed=0))
    assert "fewer than one batch (1000)" in err and "--config.batch_size" in err


def test_invalid_setting_checkpoint_not_found_and_export_failure(tmp_path, capsys):
    from vertex_jax import runs
    from vertex_jax.data.preprocess import PreprocessConfig
    from vertex_jax.export.errors import ExportError

    err = _message(capsys, lambda: PreprocessConfig(border_crop=0.7))
    assert "error: invalid setting: border_crop must be in [0, 0.5), got 0.7" in err and "--config." in err
    err = _message(capsys, lambda: runs.resolve_step_dir(tmp_path / "nothing"))
    assert "does not exist" in err and "<workdir>/checkpoints/<step>" in err

    def verification_failed():
        raise ExportError("verification failed: max |difference| of probabilities 3e-2 > 1e-4")
    assert "nothing was written" in _message(capsys, verification_failed)


def test_bugs_keep_their_traceback(capsys):
    def bug(argv):
        return np.zeros(2).reshape(3)  # a ValueError, but not one the project raised

    with pytest.raises(ValueError, match="cannot reshape"):
        user_errors(bug)([])
    with pytest.raises(ZeroDivisionError):
        user_errors(lambda argv: 1 / 0)([])
    assert explain(KeyError("x")) is None and capsys.readouterr().err == ""


@pytest.mark.parametrize("how", ["--verbosity=1", "--verbosity 2", "env"])
def test_traceback_on_request(monkeypatch, tmp_path, how):
    from vertex_jax import runs

    if how == "env":
        monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    else:
        monkeypatch.setattr(sys, "argv", ["prog", *how.split()])
    seen = []

    def main(argv):
        seen.append(argv)
        runs.resolve_step_dir(tmp_path / "nothing")

    with pytest.raises(FileNotFoundError):
        user_errors(main)()
    assert seen == [[]]  # argparse entry points never see --verbosity
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert not cli.traceback_wanted(["--verbosity=0"]) and not cli.traceback_wanted(["--verbosity", "-1"])


def test_main_prints_one_block_and_exits_2(tmp_path):
    """The absl entry point (vertex_jax.main) through app.run, as a user runs it."""
    (tmp_path / "m.csv").write_text("image_id,patient_id,path,domain,pvf,osteo,age,sex,bmi\n"
                                    "a,p1,x.png,xray,1,0,70,F,22\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(cli.TRACEBACK_ENV, None)
    command = [sys.executable, "-m", "vertex_jax.main", "--config=configs/xray.py:tiny",
               f"--workdir={tmp_path / 'run'}", f"--config.data.manifest={tmp_path / 'm.csv'}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "error: 1 problem(s) in the manifest" in proc.stderr
    assert "missing file(s) ['x.png'] at line(s) 2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 6
