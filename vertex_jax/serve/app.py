"""The HTTP API: ``POST /predict``, ``GET /health``, ``GET /model``, ``GET /model/card``.

``POST /predict``: multipart form with ``file`` (DICOM, PNG, JPEG or TIFF) and optional
``age`` (years), ``sex`` (F/M) and ``bmi`` (kg/m²); answers the scores.csv row of
``predict --backend onnx`` as JSON, with ``clinical_source`` (``form``, ``dicom`` or
``missing`` per value: the form wins, the DICOM header fills what it leaves blank).
``?report=sr`` answers a DICOM upload's Structured Report instead (``application/dicom``).
``GET /model`` answers model.json; ``GET /model/card`` the clinical model card (``model_card.md``
of the export, ``text/markdown``).

Every refusal is a 4xx with ``{"error": ..., "todo": ...}``: 400 (malformed request, no
``file``), 413 (body over the limit), 415 (not multipart; a file that is not DICOM, PNG,
JPEG or TIFF), 422 (invalid form values; an image that cannot be read: truncated, corrupt,
over the pixel limit, not an image). Any other exception is a bug: 500 and a log line.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from vertex_jax.errors import UserError
from vertex_jax.serve.scoring import Scored, Scorer
from vertex_jax.serve.upload import (
    DEFAULT_MAX_UPLOAD_MB,
    FORM_FIELDS,
    MB,
    BodyLimit,
    UploadError,
    error_body,
    parse_clinical,
    safe_name,
    sniff_format,
    stored_name,
    unknown_fields,
)

log = logging.getLogger("vertex_jax.serve")
REPORTS = ("sr",)
_HTTP_TODO = {404: "the endpoints are POST /predict, GET /health, GET /model and GET /model/card",
              405: "POST /predict with a multipart file; GET /health, GET /model, GET /model/card"}


def create_app(model: str | Path, *, max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * MB),
               threads: int = 0) -> FastAPI:
    """The service of the exported ``model`` (see :func:`vertex_jax.serve.scoring.resolve_model`);
    the model is loaded here, so a bad path fails before the server starts."""
    scorer = Scorer(model, threads=threads)
    app = FastAPI(title="VERTE-X scores", summary="pVF and osteoporosis scores of a lateral spine "
                  "radiograph, by an exported ONNX model", docs_url="/docs", redoc_url=None)
    app.state.scorer = scorer
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    _add_error_handlers(app)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Up, and which model it serves."""
        return {"status": "ok", "model": scorer.name, "step": scorer.backend.step,
                "tasks": list(scorer.backend.tasks)}

    @app.get("/model")
    def model_card() -> dict[str, Any]:
        """The model's description: model.json of the export."""
        return scorer.card

    @app.get("/model/card", response_class=PlainTextResponse)
    def clinical_card() -> Response:
        """The clinical model card: model_card.md of the export, as Markdown."""
        text = scorer.card_markdown()
        if text is None:
            raise UploadError(404, f"the export {scorer.path.parent} has no model_card.md",
                              "export the checkpoint again with python -m vertex_jax.export (it writes the "
                              "card); GET /model answers model.json")
        return Response(text, media_type="text/markdown; charset=utf-8")

    @app.post("/predict")
    async def predict(request: Request, report: str | None = None) -> Response:
        """Scores of one uploaded image (multipart ``file``; ``age``, ``sex``, ``bmi``)."""
        if report is not None and report not in REPORTS:
            raise UploadError(400, f"report={report!r} is not one of {list(REPORTS)}",
                              "leave report out for the JSON scores, or ask report=sr (DICOM uploads)")
        form = await _read_form(request)
        with tempfile.TemporaryDirectory(prefix="vertex-serve-") as tmp:
            try:
                upload, clinical = _file_of(form), parse_clinical(form)
                filename = safe_name(upload.filename)
                path = Path(tmp) / stored_name(filename)
                size = await run_in_threadpool(_store, upload, path)
            finally:
                await form.close()  # the spooled upload, on disk past 1 MB
            if size == 0:
                raise UploadError(400, f"the uploaded file {filename} is empty", "send the image's bytes")
            fmt = sniff_format(path, filename)
            if fmt is None:
                raise UploadError(415, f"{filename} is not a DICOM, PNG, JPEG or TIFF file (its content "
                                       "is none of these)", "send a radiograph as DICOM, PNG, JPEG or TIFF")
            if report == "sr" and fmt != "DICOM":
                raise UploadError(422, f"report=sr needs a DICOM upload; {filename} is {fmt}",
                                  "send the DICOM image, or leave report out for the JSON scores")
            scored = await run_in_threadpool(scorer.score_file, path, filename=filename, fmt=fmt,
                                             clinical=clinical)
            if report == "sr":
                return await run_in_threadpool(_structured_report, scorer, path, scored)
        return JSONResponse(scored.answer())

    return app


async def _read_form(request: Request) -> FormData:
    """The form of a multipart request (at most one file, only the known fields)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise UploadError(415, f"the request is {content_type or 'without a Content-Type'}, not "
                               "multipart/form-data",
                          "send a multipart form with the image as field 'file', e.g. curl -F file=@image.dcm")
    try:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS), max_part_size=64 * 1024)
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected before the upload ended", "send the whole request") from None
    if unknown := unknown_fields(form):
        await form.close()  # its spooled files
        raise UploadError(400, f"unknown form field(s) {unknown}; the fields are {list(FORM_FIELDS)}",
                          "send the image as 'file' and, where known, 'age', 'sex' (F/M) and 'bmi'")
    return form


def _file_of(form: FormData) -> UploadFile:
    """The form's ``file`` part; 400 when it is missing or not a file."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        what = "is a text field, not a file" if upload is not None else "is missing"
        raise UploadError(400, f"the form field 'file' {what}",
                          "send the image as a file part named 'file', e.g. curl -F file=@image.dcm")
    return upload


def _store(upload: UploadFile, path: Path) -> int:
    """Copy the (spooled) upload to ``path``; its size in bytes."""
    upload.file.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
        return out.tell()


def _structured_report(scorer: Scorer, path: Path, scored: Scored) -> Response:
    """The DICOM Structured Report of the scores, written from the upload's header."""
    import pydicom

    try:
        from vertex_jax.dicom_out.report import structured_report
    except ImportError as error:  # highdicom absent
        raise UploadError(501, f"Structured Reports need {error.name}, which this install lacks",
                          "install it on the server, or leave report out for the JSON scores") from None
    source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    try:
        report = structured_report(source, scored.row, tasks=scorer.backend.tasks,
                                   thresholds=operating_points(scorer.backend.thresholds),
                                   vertebrae=scored.vertebrae or ())
    except (ValueError, AttributeError) as error:  # a header without what a reference needs
        raise UploadError(422, f"cannot make a Structured Report of {scored.row.get('path')}: {error}",
                          "send a DICOM image with its study, series and instance UIDs, or leave report out") from None
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    name = f"{Path(str(scored.row.get('image_id') or 'upload')).name}_sr.dcm"
    return Response(buffer.getvalue(), media_type="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def operating_points(thresholds: dict | None) -> dict[str, float] | None:
    """Each task's Youden threshold of model.json's ``thresholds`` (chosen on validation)."""
    points = {task: float(entry["youden"]) for task, entry in (thresholds or {}).items()
              if isinstance(entry, dict) and entry.get("youden") is not None}
    return points or None


def _add_error_handlers(app: FastAPI) -> None:
    """User errors as 4xx ``{"error", "todo"}``; anything else a 500 and a log line."""

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        status = getattr(error, "status", 422)
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, str(error).splitlines()[0])
        return JSONResponse(error_body(error), status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        todo = _HTTP_TODO.get(error.status_code, "check the request: a multipart form with the image as 'file'")
        return JSONResponse({"error": str(error.detail), "todo": todo}, error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse({"error": f"invalid request: {problems}", "todo": "check the request's parameters"},
                            422)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.error("bug: %s %s raised %s: %s", request.method, request.url.path, type(error).__name__, error)
        return JSONResponse({"error": f"internal error ({type(error).__name__}): a bug in the service",
                             "todo": "report it with the server's log; the request can be retried"}, 500)
