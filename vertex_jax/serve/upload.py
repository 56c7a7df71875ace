"""What a client sends: the size limit, the form's clinical fields, the file's format.

Every refusal is an :class:`UploadError` (a :class:`vertex_jax.errors.UserError`) carrying
its HTTP status; the app answers it as ``{"error": ..., "todo": ...}``. The size limit is
enforced twice, before anything is read: on the declared ``Content-Length`` (answered at
once) and on the bytes as they arrive (a chunked body is cut off at the limit), so an
oversized body never reaches memory or disk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from vertex_jax.data.clinical import CLINICAL, RANGES
from vertex_jax.data.folder import IMAGE_SUFFIXES
from vertex_jax.data.io import is_dicom
from vertex_jax.errors import InputDataError

MB = 2**20
DEFAULT_MAX_UPLOAD_MB = 64.0
FORM_FIELDS = ("file", *CLINICAL)
_SEX = {"f": "F", "female": "F", "m": "M", "male": "M"}
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
          b"II+\x00": "TIFF", b"MM\x00+": "TIFF"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class UploadError(InputDataError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, status: int, what: str, todo: str):
        super().__init__(what, todo=todo)
        self.status = status


def too_large(limit: int, size: str) -> UploadError:
    """The 413 for a body over ``limit`` bytes (``size``: what is known of its size)."""
    return UploadError(413, f"the request body is {size}, over the limit of {limit / MB:g} MB",
                       f"send one image of at most {limit / MB:g} MB (the server's --max-upload-mb)")


def error_body(error: UploadError | InputDataError | Exception, todo: str = "") -> dict[str, str]:
    """The JSON of a refusal: what is wrong and what to do."""
    return {"error": str(error), "todo": getattr(error, "todo", "") or todo}


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, unread.

    A declared ``Content-Length`` over the limit is answered before the body is read; a body
    without one (chunked) is counted as it arrives and refused where it passes the limit.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                error = UploadError(400, f"invalid Content-Length {declared.decode(errors='replace')!r}",
                                    "send a valid Content-Length header, or none (chunked)")
                await JSONResponse(error_body(error), error.status)(scope, receive, send)
                return
            if size > self.max_bytes:
                error = too_large(self.max_bytes, f"{size / MB:.1f} MB (Content-Length)")
                await JSONResponse(error_body(error), 413)(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes, f"more than {self.max_bytes / MB:g} MB")
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except UploadError as error:  # the app's handler answers it; this is the backstop
            if started:
                raise
            await JSONResponse(error_body(error), error.status)(scope, receive, send)


def parse_clinical(form: Mapping[str, Any]) -> dict[str, str]:
    """age, sex and BMI of the form as manifest text ("" = not given), checked: every problem
    in one 422."""
    values, problems = {}, []
    for name in CLINICAL:
        raw = form.get(name)
        if raw is not None and not isinstance(raw, str):
            problems.append(f"{name} must be a form field, not a file")
            continue
        text = (raw or "").strip()
        if not text:
            values[name] = ""
        elif name == "sex":
            values[name] = _SEX.get(text.lower(), "")
            if not values[name]:
                problems.append(f"sex {text[:20]!r} is not F or M")
        else:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            lo, hi = RANGES[name]
            if not math.isfinite(number):
                problems.append(f"{name} {text[:20]!r} is not a number")
            elif not lo <= number <= hi:
                problems.append(f"{name} {number:g} is outside [{lo:g}, {hi:g}]")
            values[name] = repr(number)
    if problems:
        raise UploadError(422, "invalid form field(s): " + "; ".join(problems),
                          f"age in years ({RANGES['age'][0]:g}-{RANGES['age'][1]:g}), sex F or M, bmi in kg/m² "
                          f"({RANGES['bmi'][0]:g}-{RANGES['bmi'][1]:g}); leave a field out where unknown")
    return values


def unknown_fields(form: Mapping[str, Any]) -> list[str]:
    """Form fields the service does not know (a typo would otherwise pass unnoticed)."""
    return sorted(k for k in form.keys() if k not in FORM_FIELDS)


def safe_name(filename: str | None) -> str:
    """The client's file name reduced to a harmless base name (``upload`` if nothing is left)."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", base).strip("._")[:120]
    return name or "upload"


def sniff_format(path: Path, name: str) -> str | None:
    """DICOM, PNG, JPEG or TIFF as :func:`vertex_jax.data.io.read_image` recognises the file
    (content first; a DICOM suffix is tried as DICOM too); None for anything else."""
    with open(path, "rb") as f:
        head = f.read(8)
    if is_dicom(path):
        return "DICOM"
    if fmt := next((f for magic, f in _MAGIC.items() if head.startswith(magic)), None):
        return fmt
    if Path(name).suffix.lower() in {".dcm", ".dicom", ".dic"}:
        return "DICOM"
    return None


def stored_name(name: str) -> str:
    """The name the upload is stored under: ``upload`` plus the client's suffix when it is an
    image one (a DICOM without preamble is then read as ``predict`` reads a ``.dcm``)."""
    suffix = Path(name).suffix.lower()
    return "upload" + (suffix if suffix in IMAGE_SUFFIXES else "")
