"""Data flows one way: the imports between the package's parts, read from the source (nothing
is imported), have no circle, and the lower layers never reach up. Entry points
(``__main__.py``, ``vertex_jax/main.py``) sit on top and may import anything."""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vertex_jax"
# part -> parts it must never import, with the reason
FORBIDDEN = {
    "evaluate": ({"predict", "explain", "bench", "export", "train", "main"}, "statistics never import prediction"),
    "prognosis": ({"predict", "explain", "bench", "export", "train", "main"}, "statistics never import prediction"),
    "calibrate": ({"predict", "explain", "bench", "export", "train", "main"}, "fitted maps are statistics"),
    "validate": ({"predict", "explain", "bench", "export", "train", "main"},
                 "validation statistics; only its command scores"),
    "data": ({"models", "train", "predict", "explain", "evaluate", "calibrate", "export", "bench", "runs",
              "inference", "vertebrae"}, "data is the bottom of the pipeline"),
    "models": ({"data", "train", "predict", "explain", "evaluate", "calibrate", "export", "bench", "runs"},
               "the network knows nothing of data or training"),
    "serve": ({"train", "models", "explain", "bench", "export", "main", "inference", "mesh", "runs"},
              "the service runs without JAX: predict's ONNX path, data, calibrate and the DICOM outputs"),
    "vertebrae": ({"models", "train", "predict", "explain", "bench", "export", "main", "inference", "runs",
                   "serve", "dicomweb", "dicom_out", "synthetic", "calibrate", "validate", "prognosis"},
                  "the vertebra head's numerical parts (NumPy) sit below the network and training"),
    "dicom_out": ({"predict", "train", "models", "explain", "bench", "export", "inference", "main"},
                  "the DICOM outputs serve the ONNX backend and the HTTP service: no model, no JAX"),
    "dicomweb": ({"predict", "train", "models", "explain", "bench", "export", "inference", "main", "serve"},
                 "talking to a PACS needs no model: predict calls it, not the other way"),
    "errors": ({"*"}, "the error family imports nothing of the project"),
    "html_page": ({"*"}, "the page helpers sit below every part that writes a page"),
    "run_layout": ({"*"}, "the run directory's names sit below every part that reads or writes a run"),
    "model_card": ({"train", "models", "predict", "explain", "bench", "export", "main", "inference", "runs", "mesh",
                    "serve", "data", "evaluate", "calibrate"},
                   "the card's Markdown is rendered from JSON: training, evaluate, calibrate and export call it"),
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _library_imports() -> dict[str, set[str]]:
    """part -> parts its library modules import (entry points left out)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py" or path == PACKAGE / "main.py" or "configs" in path.parts:
            continue
        source = _part(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vertex_jax":
                names = ([f"vertex_jax.{a.name}" for a in node.names] if node.module == "vertex_jax"
                         else [node.module])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "vertex_jax"]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if len(parts) > 1 and parts[1] != source and not parts[1].startswith("_"):
                    edges[source].add(parts[1])
    return edges


def test_no_part_imports_upward():
    edges = _library_imports()
    problems = [f"{part} imports {sorted(edges[part] if '*' in banned else edges[part] & banned)}: {why}"
                for part, (banned, why) in FORBIDDEN.items()
                if ("*" in banned and edges[part]) or edges[part] & banned]
    assert not problems, "\n".join(problems)


def test_the_parts_import_each_other_without_a_circle():
    edges = _library_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (circle := visit(nxt, path + [node])):
                return circle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (circle := visit(start, [])):
            raise AssertionError("import circle: " + " -> ".join(circle))
    assert len(edges) > 10  # the scan did find the package's parts
