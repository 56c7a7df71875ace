"""The README and the docs site: the site builds with no broken link, the README stays short,
and every command they show uses options its entry point really has."""

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vertex_jax.__main__ import COMMANDS
from vertex_jax.config_files import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 15_000  # bytes: read in five minutes; the rest lives in docs/
# absl's own flags, accepted by every absl entry point
ABSL_FLAGS = {"verbosity", "v", "logtostderr", "alsologtostderr", "log_dir", "stderrthreshold",
              "showprefixforinfo", "help", "helpfull", "helpshort", "flagfile", "only_check_args"}


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocs-material) is not installed")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                           str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, env={"NO_MKDOCS_2_WARNING": "1",
                                                                         **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "errors" / "index.html").exists()


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= README_LIMIT
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def _code_lines(path: Path) -> list[str]:
    """Lines of the fenced code blocks of a page (continuation lines joined) and the
    inline code spans that are commands."""
    lines, inside, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            lines.append(pending)
            pending = ""
        else:  # inline code spans that are commands
            lines += [span for span in re.findall(r"`([^`]+)`", line)
                      if re.match(r"(\S*python -m vertex_jax|vertex \w)", span)]
    return lines


def _commands(path: Path) -> list[tuple[str, list[str]]]:
    """(module, its arguments) of every ``python -m vertex_jax...`` / ``vertex SUB`` command."""
    found = []
    for line in _code_lines(path):
        for segment in re.split(r"&&|\|\||;|\|", line):
            try:
                tokens = shlex.split(segment, comments=True)
            except ValueError:
                tokens = segment.split()
            while tokens and re.match(r"^\w+=", tokens[0]):  # VAR=value prefixes
                tokens = tokens[1:]
            if len(tokens) >= 3 and tokens[0].endswith("python") and tokens[1] == "-m" \
                    and re.fullmatch(r"vertex_jax(\.\w+)*", tokens[2]):
                if tokens[2] != "vertex_jax":
                    found.append((tokens[2], tokens[3:]))
                elif len(tokens) > 3 and tokens[3] in COMMANDS:  # python -m vertex_jax SUB
                    found.append((COMMANDS[tokens[3]][0], tokens[4:]))
            elif len(tokens) >= 2 and tokens[0] == "vertex" and tokens[1] in COMMANDS:
                found.append((COMMANDS[tokens[1]][0], tokens[2:]))
    return found


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


def _argparse_options(module: str, monkeypatch) -> set[str]:
    """Option strings of an argparse entry point: its parser, caught as it parses."""
    def catch(self, *args, **kwargs):
        raise _Parser(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    mod = importlib.import_module(module)
    main = getattr(importlib.import_module(f"{module}.__main__"), "main", None) \
        if not hasattr(mod, "main") else mod.main
    try:
        try:
            main([])
        except TypeError:
            main()
    except _Parser as caught:
        return {s for action in caught.parser._actions for s in action.option_strings}
    raise AssertionError(f"{module}: no argparse parser found")


def _absl_flags(module: str) -> set[str] | None:
    """Flags an absl entry point defines (read from its source: importing two absl entry
    points in one process would define ``--config`` twice)."""
    spec = importlib.util.find_spec(module)
    path = Path(spec.origin)
    if spec.submodule_search_locations:
        path = path.with_name("__main__.py")
    source = path.read_text()
    if "from absl import app" not in source:
        return None
    return {f"--{name}" for name in re.findall(r'DEFINE_\w+\(\s*"(\w+)"', source) + sorted(ABSL_FLAGS)}


def _config_field_exists(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return False
    return True


def test_every_command_shown_uses_options_that_exist(monkeypatch):
    commands = [(page, module, args) for page in PAGES for module, args in _commands(page)]
    assert len(commands) > 20  # the pages do show commands
    options: dict[str, set[str]] = {}
    problems = []
    for page, module, args in commands:
        if module not in options:
            options[module] = _absl_flags(module) or _argparse_options(module, monkeypatch)
        config = None
        for arg in args:
            flag = arg.strip("[]()")
            if not flag.startswith("--") or "<" in flag or "..." in flag or "…" in flag:
                continue
            name = flag.split("=", 1)[0]
            if name.startswith("--config.") and "--config" in options[module]:
                if config is None:
                    spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")),
                                "configs/xray.py")
                    config = load_config(spec)
                if not _config_field_exists(config, name[len("--config."):]):
                    problems.append(f"{page.name}: {module} {name}: no such config field")
            elif name not in options[module]:
                problems.append(f"{page.name}: {module} {name}: no such option")
    assert not problems, "\n".join(problems)


def test_the_export_layout_the_docs_name_is_what_export_writes():
    from vertex_jax.export.run import targets

    written = targets(Path("export/xray"), ["onnx", "savedmodel"], 1)
    text = "\n".join(p.read_text() for p in PAGES)
    assert str(written["onnx"] / "model.onnx") in text and str(written["savedmodel"]) in text
    assert "export/model.onnx" not in text
