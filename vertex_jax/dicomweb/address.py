"""``dicomweb://host:port/prefix?Keyword=value``: a DICOMweb server and the studies to take.

``dicomweb://`` is plain HTTP and ``dicomwebs://`` HTTPS; the path is the server's DICOMweb
root (``/dicom-web`` on Orthanc, ``/dcm4chee-arc/aets/DCM4CHEE/rs`` on dcm4chee). The query
holds QIDO-RS study-level matching keys, sent as they are: ``StudyInstanceUID``,
``AccessionNumber``, ``PatientID``, ``StudyDate=20260101-20261231``, ``ModalitiesInStudy``.
With no query every study the server holds is taken.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from vertex_jax.errors import InputDataError

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}


@dataclasses.dataclass(frozen=True)
class Address:
    """The server's DICOMweb root URL and the QIDO-RS study filters."""

    url: str
    filters: dict[str, str]

    def __str__(self) -> str:
        query = urllib.parse.urlencode(self.filters)
        return self.url + (f"?{query}" if query else "")


def is_dicomweb(text: str) -> bool:
    """Whether ``text`` names a DICOMweb server rather than a file or folder."""
    return urllib.parse.urlsplit(str(text)).scheme in SCHEMES


def parse_address(text: str) -> Address:
    """The :class:`Address` of ``dicomweb[s]://host[:port]/root[?Keyword=value&...]``."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise InputDataError(f"{text!r} is not a DICOMweb address",
                             todo="write it as dicomweb://host:port/dicom-web[?StudyInstanceUID=...] "
                                  "(dicomwebs:// for HTTPS)")
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    blank = [k for k, v in pairs if not v]
    if blank:
        raise InputDataError(f"{text!r}: the filter(s) {', '.join(blank)} have no value",
                             todo="give each filter a value, e.g. ?StudyInstanceUID=1.2.3")
    filters: dict[str, str] = {}
    for key, value in pairs:
        if key in filters:
            raise InputDataError(f"{text!r}: filter {key} given twice",
                                 todo="give each filter once; a DICOM list value is written a\\b")
        filters[key] = value
    url = urllib.parse.urlunsplit((SCHEMES[parts.scheme], parts.netloc, parts.path.rstrip("/"), "", ""))
    return Address(url, filters)
