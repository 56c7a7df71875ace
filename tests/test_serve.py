"""The scoring service (python -m vertex_jax.serve): a real server in a subprocess, talked to
over HTTP. Its scores equal predict's on the same files (PNG, DICOM, form values, header
values) and its Structured Report holds them; every bad upload is a 4xx naming the problem
and the server stays up; its import chain loads no JAX; it answers the export's clinical
model card; the load benchmark (vertex_jax.bench.serve_load) counts every answer.

The model is a small ONNX graph of the export's signature and model.json schema, built here
with onnx.helper (a linear map of the canvas and the clinical inputs): the real export of
the tiny checkpoint costs about 26 s on two cores, and export itself is tested in
test_export.py. Every pixel of the canvas moves the scores, so any difference in reading or
preprocessing shows.
"""

import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest

from conftest import write_png_cohort
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.synthetic.dicom_write import write_dicom

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
TASKS = ("pvf", "osteo")
CANVAS = (64, 32)
LIMIT_MB = 4  # the test server's --max-upload-mb
THRESHOLDS = {"pvf": {"youden": 0.41}, "osteo": {"youden": 0.5}}
CARD_MARKDOWN = "# Model card: VERTE-X pvf, osteo (linear, xray)\n\n**Research software, not for clinical use.** T ≤ -2.5\n"


def _write_model(out: Path) -> Path:
    """``out/onnx/{model.onnx, model.json}`` as the export lays them out; returns ``out``."""
    rng = np.random.default_rng(0)
    h, w = CANVAS
    weights = {"W": rng.normal(0, 0.02, (h * w, len(TASKS))), "C": rng.normal(0, 0.5, (3, len(TASKS))),
               "M": rng.normal(0, 0.3, (3, len(TASKS))), "b": np.array([-0.2, 0.1]),
               "scale": np.array(1 / 255), "shape": np.array([-1, h * w])}
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k)
             for k, v in weights.items()]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Mul", ["flat", "scale"], ["pixels"]),
             helper.make_node("MatMul", ["pixels", "W"], ["a"]),
             helper.make_node("MatMul", ["clinical", "C"], ["c"]),
             helper.make_node("MatMul", ["clinical_mask", "M"], ["m"]),
             helper.make_node("Sum", ["a", "c", "m", "b"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probabilities"])]
    graph = helper.make_graph(
        nodes, "tiny_linear",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", h, w, 1]),
         helper.make_tensor_value_info("clinical", TensorProto.FLOAT, ["B", 3]),
         helper.make_tensor_value_info("clinical_mask", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["B", len(TASKS)]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", len(TASKS)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    folder = out / "onnx"
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    card = {"schema": "vertex_jax.export/1", "format": "onnx", "files": {"model": "model.onnx"},
            "tasks": list(TASKS), "domain": "xray", "preprocess": PreprocessConfig(canvas=CANVAS).to_dict(),
            "clinical_stats": {**ClinicalStats((70.0, 0.6, 24.0), (8.0, 0.5, 3.5)).to_dict(),
                               "order": ["age", "sex", "bmi"]},
            "thresholds": THRESHOLDS, "calibration": None,
            "model": {"checkpoint": "tiny-linear/checkpoints/7", "step": 7, "variant": "linear"}}
    (folder / "model.json").write_text(json.dumps(card, indent=2))
    (folder / "model_card.md").write_text(CARD_MARKDOWN, encoding="utf-8")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The base address of a running server and its log."""

    def __init__(self, port: int, log: Path, proc: subprocess.Popen):
        self.port, self.log, self.proc = port, log, proc

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post(self, file: tuple[str, bytes] | None = None, fields: dict[str, str] | None = None,
             path: str = "/predict") -> tuple[int, dict, bytes]:
        body, content_type = multipart(fields or {}, file)
        return self.request("POST", path, body, {"Content-Type": content_type})

    def json(self, *args, **kwargs) -> tuple[int, dict]:
        status, _, body = self.post(*args, **kwargs)
        return status, json.loads(body)


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None, boundary: str = "vertex-b0undary"
              ) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        name, data = file
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return _write_model(tmp_path_factory.mktemp("export") / "out")


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    port, log = _free_port(), tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vertex_jax.serve", "--model", str(export_dir),
                                 "--port", str(port), "--max-upload-mb", str(LIMIT_MB), "--threads", "1"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    server = Server(port, log, proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if server.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /health within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A PNG, a DICOM with age/sex in its header, a JPEG-LS DICOM without: one folder."""
    root = tmp_path_factory.mktemp("images")
    write_png_cohort(root / "cohort", 1)
    folder = root / "in"
    folder.mkdir()
    png = folder / "img000.png"
    (root / "cohort" / "images" / "img000.png").rename(png)
    pixels = (np.random.default_rng(3).random((150, 90)) * 4095).astype(np.uint16)
    write_dicom(folder / "a.dcm", pixels, bits_stored=12, patient_sex="F", patient_age_years=71,
                patient_id="P-17")
    write_dicom(folder / "b.dcm", pixels[::-1].copy(), bits_stored=12, compression="jpegls")
    return {"png": png, "a": folder / "a.dcm", "b": folder / "b.dcm", "folder": folder}


def _predict(export_dir: Path, source: Path, out: Path) -> pd.DataFrame:
    proc = subprocess.run([sys.executable, "-m", "vertex_jax.predict", "--backend", "onnx", "--model",
                           str(export_dir / "onnx" / "model.onnx"), "--input", str(source), "--out", str(out),
                           "--clinical-from-dicom", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pd.read_csv(out, keep_default_na=False).set_index("image_id")


def _assert_same(served: dict, expected: pd.Series) -> None:
    """The service's JSON row against predict's scores.csv row."""
    for task in TASKS:
        for column in (f"{task}_prob", f"{task}_prob_raw", f"{task}_logit"):
            assert abs(served[column] - float(expected[column])) <= 1e-6, (column, served[column], expected[column])
    for column in ("calibration", "clinical_missing", "input_check", "model", "preprocess_version", "patient_id",
                   "sex", "dicom_patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
                   "accession_number", "domain"):
        assert served[column] == expected[column], column
    assert served["model_step"] == int(expected["model_step"])
    for column in ("age", "bmi"):
        assert served[column] == (float(expected[column]) if expected[column] != "" else None), column
    assert served["clinical_source"] == expected["clinical_source"].replace("=csv", "=form")


def test_health_and_model_card(server, export_dir):
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "model": "tiny-linear/checkpoints/7",
                                                  "step": 7, "tasks": list(TASKS)}
    status, _, body = server.request("GET", "/model")
    assert status == 200 and json.loads(body) == json.loads((export_dir / "onnx" / "model.json").read_text())
    status, headers, body = server.request("GET", "/model/card")
    assert status == 200 and headers["content-type"] == "text/markdown; charset=utf-8"
    assert body.decode("utf-8") == CARD_MARKDOWN


def test_an_export_without_its_model_card_answers_404(tmp_path):
    from vertex_jax.serve.app import create_app
    from vertex_jax.serve.upload import UploadError

    export = _write_model(tmp_path / "old")
    (export / "onnx" / "model_card.md").unlink()  # an export made before the card was written
    app = create_app(export)
    card = next(route.endpoint for route in app.routes if getattr(route, "path", "") == "/model/card")
    with pytest.raises(UploadError, match="has no model_card.md") as refused:
        card()
    assert refused.value.status == 404 and "python -m vertex_jax.export" in refused.value.todo


def test_scores_equal_predict_on_the_same_files(server, export_dir, images, tmp_path):
    folder = _predict(export_dir, images["folder"], tmp_path / "scores.csv")
    assert sorted(folder.index) == ["a", "b", "img000"]
    for name, image_id in (("png", "img000"), ("a", "a"), ("b", "b")):
        status, served = server.json((images[name].name, images[name].read_bytes()))
        assert status == 200, served
        _assert_same(served, folder.loc[image_id])
        assert served["image_id"] == image_id and served["path"] == images[name].name
    a = folder.loc["a"]
    assert (a["sex"], float(a["age"]), a["clinical_source"]) == ("F", 71.0, "age=dicom;sex=dicom;bmi=missing")
    assert a["dicom_patient_id"] == "P-17" and a["sop_instance_uid"]
    # Form values, and the header filling what the form leaves blank: predict on a CSV.
    table = pd.DataFrame({"image_id": ["png_form", "dcm_form"], "patient_id": ["img000", "P-17"],
                          "path": [str(images["png"]), str(images["a"])],
                          "age": ["66.5", "60"], "sex": ["M", ""], "bmi": ["23.1", ""]})
    table.to_csv(tmp_path / "inputs.csv", index=False)
    csv = _predict(export_dir, tmp_path / "inputs.csv", tmp_path / "form_scores.csv")
    status, served = server.json((images["png"].name, images["png"].read_bytes()),
                                 {"age": "66.5", "sex": "m", "bmi": " 23.1 "})
    assert status == 200, served
    _assert_same(served, csv.loc["png_form"])
    assert served["clinical_source"] == "age=form;sex=form;bmi=form" and served["clinical_missing"] == ""
    status, served = server.json((images["a"].name, images["a"].read_bytes()), {"age": "60"})
    assert status == 200, served
    _assert_same(served, csv.loc["dcm_form"])
    assert (served["age"], served["sex"], served["clinical_source"]) == (60.0, "F", "age=form;sex=dicom;bmi=missing")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _dicom_bomb(source: Path, out: Path) -> bytes:
    ds = pydicom.dcmread(source)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(out)
    return out.read_bytes()


def _raw_post(server: Server, declared: int | None, chunks) -> tuple[int, dict]:
    """POST a body chunk by chunk, with ``declared`` as Content-Length (None: chunked); the
    server may answer before it is all sent."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Type", "multipart/form-data; boundary=vertex-b0undary")
        conn.putheader(*(("Content-Length", str(declared)) if declared is not None else ("Transfer-Encoding", "chunked")))
        conn.endheaders()
        try:
            for chunk in chunks:
                conn.send(chunk if declared is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if declared is None:
                conn.send(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: read its answer
            pass
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_bad_uploads_are_refused_with_the_reason(server, images, tmp_path):
    png, dcm = images["png"].read_bytes(), images["a"].read_bytes()
    cases = [  # (what, file, fields, status, words of the reason)
        ("a text file", ("notes.txt", b"lateral spine, L1 fracture?\n"), {}, 415, "not a DICOM, PNG, JPEG or TIFF"),
        ("text called .png", ("fake.png", b"not an image at all"), {}, 415, "not a DICOM, PNG, JPEG or TIFF"),
        ("an empty file", ("empty.png", b""), {}, 400, "empty"),
        ("a truncated PNG", ("cut.png", png[: len(png) // 2]), {}, 422, "cannot read the image"),
        ("a truncated DICOM", ("cut.dcm", dcm[: len(dcm) - 4000]), {}, 422, "pixel data"),
        ("a PNG bomb", ("bomb.png", _png_header(40000, 40000)), {}, 422, "over max_pixels"),
        ("a DICOM bomb", ("bomb.dcm", _dicom_bomb(images["a"], tmp_path / "bomb.dcm")), {}, 422, "over max_pixels"),
        ("a structured report", ("sr.dcm", (PYDICOM_FILES / "test-SR.dcm").read_bytes()), {}, 422, "not an image"),
        ("no file", None, {"age": "70"}, 400, "'file' is missing"),
        ("file as text", None, {"file": "img.png"}, 400, "'file' is a text field"),
        ("a typo", ("a.png", png), {"agee": "70"}, 400, "unknown form field(s) ['agee']"),
        ("bad values", ("a.png", png), {"age": "old", "sex": "X", "bmi": "400"}, 422,
         "age 'old' is not a number; sex 'X' is not F or M; bmi 400 is outside [8, 80]"),
        ("age out of range", ("a.png", png), {"age": "-3"}, 422, "age -3 is outside [0, 120]"),
        ("age not finite", ("a.png", png), {"age": "nan"}, 422, "age 'nan' is not a number"),
    ]
    for what, file, fields, status, words in cases:
        got, body = server.json(file, fields)
        assert got == status and words in body["error"] and body["todo"], (what, got, body)
        assert "vertex-serve-" not in body["error"], (what, body)  # no temporary path leaks out
    # Not multipart, no body, a report nobody makes, an unknown path.
    for method, path, body, headers, status, words in (
            ("POST", "/predict", b'{"file": "a.png"}', {"Content-Type": "application/json"}, 415, "not multipart"),
            ("POST", "/predict", None, {}, 415, "not multipart"),
            ("POST", "/predict", b"--x\r\n", {"Content-Type": "multipart/form-data"}, 400, "boundary"),
            ("GET", "/predict", None, {}, 405, "Method Not Allowed"),
            ("GET", "/scores", None, {}, 404, "Not Found")):
        got, _, answer = server.request(method, path, body, headers)
        answer = json.loads(answer)
        assert got == status and words in answer["error"] and answer["todo"], (path, got, answer)
    got, answer = server.json(("a.png", png), path="/predict?report=pdf")
    assert got == 400 and "report='pdf'" in answer["error"]
    # Over the limit: a declared 200 MB body is answered at once, unread; a chunked one where it passes.
    start = time.monotonic()
    got, answer = _raw_post(server, 200 * 2**20, (b"\0" * 65536 for _ in range(16)))
    assert got == 413 and "200.0 MB" in answer["error"] and "--max-upload-mb" in answer["todo"]
    assert time.monotonic() - start < 5
    head = (b'--vertex-b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    got, answer = _raw_post(server, None, [head, *(b"\0" * 2**20 for _ in range(LIMIT_MB + 2))])
    assert got == 413 and f"more than {LIMIT_MB} MB" in answer["error"], answer
    assert server.request("POST", "/predict", b"", {"Content-Type": "multipart/form-data",
                                                   "Content-Length": "-5"})[0] == 400  # the HTTP parser's
    # Still healthy and scoring; no request reached the bug handler.
    assert server.request("GET", "/health")[0] == 200
    assert server.json(("a.png", png))[0] == 200
    log = server.log.read_text()
    assert "bug:" not in log and "Traceback" not in log and " 500 " not in log, log[-3000:]


def _content_items(dataset) -> list:
    """Every content item of an SR tree, depth first."""
    out = []
    for item in dataset.get("ContentSequence", []):
        out += [item, *_content_items(item)]
    return out


def test_the_structured_report_on_request_holds_the_json_scores(server, images):
    source = pydicom.dcmread(images["a"], stop_before_pixels=True)
    status, headers, body = server.post((images["a"].name, images["a"].read_bytes()), path="/predict?report=sr")
    assert status == 200 and headers["content-type"] == "application/dicom", body[:500]
    sr = pydicom.dcmread(io.BytesIO(body))
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and sr.Modality == "SR"
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    status, scores = server.json((images["a"].name, images["a"].read_bytes()))
    assert status == 200
    items = _content_items(sr)
    numbers = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
               for i in items if i.ValueType == "NUM"}
    calls = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeMeaning
             for i in items if i.ValueType == "CODE"}
    for task in TASKS:
        for column in (f"{task}_prob", f"{task}_prob_raw"):
            assert abs(numbers[column] - scores[column]) <= 1e-6, column
        threshold = THRESHOLDS[task]["youden"]  # model.json's operating point
        assert calls[f"{task}_call"] == ("Positive" if scores[f"{task}_prob"] >= threshold else "Negative")
    status, answer = server.json((images["png"].name, images["png"].read_bytes()), path="/predict?report=sr")
    assert status == 422 and "needs a DICOM upload" in answer["error"]


def test_the_model_path_forms_and_a_bad_one(export_dir, tmp_path, capsys):
    from vertex_jax.cli import user_errors
    from vertex_jax.errors import MissingInputError
    from vertex_jax.serve.__main__ import main
    from vertex_jax.serve.scoring import resolve_model

    model = export_dir / "onnx" / "model.onnx"
    assert resolve_model(export_dir) == resolve_model(export_dir / "onnx") == resolve_model(model) == model
    for bad in (tmp_path, tmp_path / "absent", export_dir / "onnx" / "model.json"):
        with pytest.raises(MissingInputError, match="no exported ONNX model there"):
            resolve_model(bad)
    assert user_errors(main)(["--model", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "no exported ONNX model there" in err and "onnx/model.onnx" in err


def test_the_service_imports_no_jax():
    code = ("import sys, vertex_jax.serve.app, vertex_jax.serve.__main__\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'orbax'))\n"
            "assert not bad, bad\n"
            "assert 'onnxruntime' in sys.modules and 'fastapi' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_vertex_lists_serve():
    from vertex_jax.__main__ import COMMANDS

    assert COMMANDS["serve"][0] == "vertex_jax.serve"


def test_the_load_benchmark_starts_the_service_and_counts_every_answer(export_dir, images, tmp_path, capsys):
    from vertex_jax.bench.serve_load import main as load_main

    out = tmp_path / "load.json"
    assert load_main(["--model", str(export_dir), "--requests", "30", "--concurrency", "4", "--warmup", "4",
                      "--files", str(images["folder"]), "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["statuses"] == {"200": 30} and report["errors"] == 0 and report["warmup_errors"] == 0
    assert report["server_500s_logged"] == 0
    assert report["files"]["count"] == 3 and report["files"]["formats"] == {"PNG": 1, "DICOM": 2}
    assert report["model"]["step"] == 7 and report["requests"] == 30 and report["concurrency"] == 4
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["throughput_rps"] == pytest.approx(30 / report["wall_s"])
    rss = report["rss_mib"]
    assert all(rss[k] > 0 for k in ("start", "after_warmup", "end"))
    assert rss["growth_after_warmup"] == pytest.approx(rss["end"] - rss["after_warmup"])
    assert rss["peak"] >= rss["halfway"] > 0 and rss["growth_second_half"] == pytest.approx(rss["end"] - rss["halfway"])
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert report["versions"]["onnxruntime"] and report["versions"]["uvicorn"]
    for words in ("latency ms: p50", "p95", "p99", "throughput", "req/s", "answers: 200: 30; errors 0",
                  "server RSS: start", "growth over the timed requests", "over their second half", "machine: ",
                  "versions: "):
        assert words in printed, words


def test_the_load_benchmark_refuses_bad_arguments_before_starting(export_dir, tmp_path, capsys):
    from vertex_jax.bench.serve_load import main as load_main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    for args, words in ((["--files", str(tmp_path / "empty")], "no DICOM, PNG, JPEG or TIFF file"),
                        (["--files", str(tmp_path / "absent")], "no such folder"),
                        (["--requests", "0"], "--requests (0)")):
        assert load_main(["--model", str(export_dir), *args]) == 2
        assert words in capsys.readouterr().err, words
    assert load_main(["--model", str(tmp_path)]) == 2
    assert "no exported ONNX model there" in capsys.readouterr().err


def test_the_load_benchmark_imports_no_jax():
    code = ("import sys, vertex_jax.bench.serve_load, vertex_jax.serve.scoring, vertex_jax.synthetic.cohort\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'orbax'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
