"""Reading a DICOM Structured Report's content tree back in tests."""

from __future__ import annotations


def sr_items(ds) -> list:
    """Every content item of an SR tree, depth first."""
    found = []
    for item in getattr(ds, "ContentSequence", []):
        found.append(item)
        found += sr_items(item)
    return found
