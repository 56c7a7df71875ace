"""Fetch the studies a :class:`~vertex_jax.dicomweb.address.Address` names into a folder.

Studies are found by QIDO-RS, their series listed, and every instance of an image series
retrieved by WADO-RS into ``folder/<study>/<series>/<instance>.dcm``, which ``predict`` then
reads like any folder. An instance already in the folder is not fetched again (an instance
never changes under its UID). Series of non-image kinds (SR, KO, PR, DOC) are not fetched,
and instances ``skip`` recognises (this program's own reports and captures, stored back by
an earlier run) are not written; both are counted with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator

import pydicom

from vertex_jax.dicomweb.address import Address
from vertex_jax.errors import InputDataError, MissingInputError, UserError
from vertex_jax.files import atomic_open

NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC"})
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"


@dataclasses.dataclass
class Fetched:
    """What a fetch found: the folder, the studies, and what it did with each instance."""

    folder: Path
    studies: list[str]
    fetched: int = 0  # retrieved now
    present: int = 0  # in the folder from an earlier fetch
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (uid, reason)

    def summary(self) -> str:
        line = (f"{len(self.studies)} stud{'y' if len(self.studies) == 1 else 'ies'} from the DICOMweb server: "
                f"{self.fetched} instance(s) retrieved, {self.present} already in {self.folder}")
        if self.skipped:
            line += f", {len(self.skipped)} skipped ({_reasons(self.skipped)})"
        return line


def _reasons(skipped: list[tuple[str, str]]) -> str:
    counts: dict[str, int] = {}
    for _, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(f"{reason} ×{n}" for reason, n in sorted(counts.items()))


@contextlib.contextmanager
def talking_to(url: str) -> Iterator[None]:
    """Turn a refused connection or an HTTP error answer into a user error naming the server."""
    import requests

    try:
        yield
    except requests.ConnectionError as e:
        raise MissingInputError(f"cannot reach the DICOMweb server at {url}: {type(e).__name__}",
                                todo="check the host, port and root path (Orthanc: /dicom-web) and that "
                                     "the server is running") from None
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise InputDataError(f"the DICOMweb server at {url} answered HTTP {status}: {e}",
                             todo="check the address and filters; 401/403 means this server needs "
                                  "credentials the address does not carry") from None


RETRY_ATTEMPTS, RETRY_WAIT_MS = 3, 500  # a busy server gets 1 s, then 2 s; a wrong address is told in 3 s


def client(address: Address):
    """A ``dicomweb_client.DICOMwebClient`` for ``address`` that retries a refused connection or a
    busy answer (429, 503, ...) :data:`RETRY_ATTEMPTS` times with exponential back-off."""
    try:
        from dicomweb_client import DICOMwebClient
    except ModuleNotFoundError:
        raise UserError("a DICOMweb address needs dicomweb-client, which this install lacks",
                        todo="pip install 'vertex_jax[pacs]'") from None
    web = DICOMwebClient(url=address.url)
    web.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
    return web


def _value(item: dict, tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


def fetch_studies(address: Address, folder: str | Path, *,
                  skip: Callable[[pydicom.Dataset], str | None] = lambda ds: None) -> Fetched:
    """Every image instance of the studies ``address`` matches, written under ``folder``;
    ``skip(dataset)`` returns a reason to leave an instance out (or None)."""
    folder = Path(folder)
    web = client(address)
    with talking_to(address.url):
        studies = web.search_for_studies(search_filters=dict(address.filters), get_remaining=True)
        uids = sorted({_value(s, STUDY_UID) for s in studies} - {""})
        if not uids:
            raise InputDataError(f"no study on {address.url} matches {address.filters or 'any study'}",
                                 where=str(address),
                                 todo="check the filters (QIDO-RS study keys, e.g. StudyInstanceUID, "
                                      "AccessionNumber, PatientID, StudyDate)")
        result = Fetched(folder, uids)
        for study in uids:
            for series in web.search_for_series(study_instance_uid=study, get_remaining=True):
                _fetch_series(web, study, series, folder, skip, result)
    return result


def _fetch_series(web, study: str, series: dict, folder: Path,
                  skip: Callable[[pydicom.Dataset], str | None], result: Fetched) -> None:
    series_uid, modality = _value(series, SERIES_UID), _value(series, MODALITY)
    instances = web.search_for_instances(study_instance_uid=study, series_instance_uid=series_uid,
                                         get_remaining=True)
    if modality in NON_IMAGE_MODALITIES:
        result.skipped += [(_value(i, SOP_UID), f"a {modality} series") for i in instances]
        return
    for instance in instances:
        sop = _value(instance, SOP_UID)
        path = folder / study / series_uid / f"{sop}.dcm"
        if path.exists():
            result.present += 1
            continue
        dataset = web.retrieve_instance(study, series_uid, sop)
        if (reason := skip(dataset)) is not None:
            result.skipped.append((sop, reason))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            dataset.save_as(f, enforce_file_format=True)
        result.fetched += 1
