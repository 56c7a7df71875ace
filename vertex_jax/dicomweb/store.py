"""Store DICOM files on a DICOMweb server (STOW-RS), one request per study.

A server that already holds an instance under the same SOP Instance UID keeps one copy:
with the deterministic UIDs of :mod:`vertex_jax.dicom_out`, storing a run's outputs again
duplicates nothing. Instances the server refuses are listed with its reason.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pydicom

from vertex_jax.dicomweb.address import Address
from vertex_jax.dicomweb.fetch import client, talking_to

FAILED_SOP_SEQUENCE = "FailedSOPSequence"


@dataclasses.dataclass
class Stored:
    """How many instances the server took, and the ones it refused (path, reason)."""

    stored: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def summary(self, url: str) -> str:
        line = f"stored {self.stored} instance(s) on {url}"
        if self.failed:
            line += f"; {len(self.failed)} refused: " + "; ".join(f"{p}: {r}" for p, r in self.failed[:5])
        return line


def store_files(address: Address, files: Sequence[str | Path]) -> Stored:
    """STOW-RS every file in ``files`` to the server of ``address``."""
    by_study: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in map(Path, files):
        dataset = pydicom.dcmread(path)
        by_study[str(dataset.StudyInstanceUID)].append((path, dataset))
    web = client(address)
    result = Stored()
    with talking_to(address.url):
        for study, items in sorted(by_study.items()):
            answer = web.store_instances([ds for _, ds in items], study_instance_uid=study)
            failed = {str(f.ReferencedSOPInstanceUID): int(f.get("FailureReason", 0))
                      for f in answer.get(FAILED_SOP_SEQUENCE, [])}
            for path, dataset in items:
                reason = failed.get(str(dataset.SOPInstanceUID))
                if reason is None:
                    result.stored += 1
                else:
                    result.failed.append((str(path), f"failure reason 0x{reason:04X}"))
    return result
