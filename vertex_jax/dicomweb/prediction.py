"""``predict --input dicomweb://…``: the studies fetched into a spool folder and scored like a
folder, and ``--stow``: the run's DICOM outputs stored back on the same server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pandas as pd
import pydicom

from vertex_jax.dicom_out import MANUFACTURER
from vertex_jax.dicomweb.address import Address, parse_address
from vertex_jax.dicomweb.fetch import Fetched, fetch_studies
from vertex_jax.dicomweb.store import store_files


def own_output(dataset: pydicom.Dataset) -> str | None:
    """Why an instance is left out when it is one of this program's own outputs (a report or a
    capture stored back by an earlier run); None for anything else."""
    if str(dataset.get("Manufacturer", "")).strip() == MANUFACTURER:
        return f"an output of {MANUFACTURER}"
    return None


@dataclasses.dataclass
class DicomwebInput:
    """The server and what was fetched from it."""

    address: Address
    fetched: Fetched

    def rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``table`` (the spool folder's inputs) that belong to the fetched studies:
        a spool kept from a fetch with other filters holds other studies too."""
        keep = table["study_instance_uid"].isin(self.fetched.studies)
        return table[keep].reset_index(drop=True)


def fetch_input(text: str, spool: str | Path) -> DicomwebInput:
    """Fetch the studies ``text`` (a ``dicomweb://`` address) names into ``spool``; prints what it did."""
    address = parse_address(text)
    fetched = fetch_studies(address, spool, skip=own_output)
    print(fetched.summary())
    return DicomwebInput(address, fetched)


def store_back(source: DicomwebInput, files: Sequence[Path]) -> None:
    """STOW-RS ``files`` to the server the input came from; prints what it did."""
    print(store_files(source.address, files).summary(source.address.url))
