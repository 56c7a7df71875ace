"""Write a training manifest for a folder of DICOMs (and PNGs), labels joined from a CSV.

    python -m vertex_jax.manifest FOLDER --out manifest.csv [--labels labels.csv] [--domain xray]

One row per image: patient from PatientID, age/sex/BMI from the headers with their source,
the DICOM identifiers, labels joined by any identifier (:mod:`vertex_jax.manifest.build`).
Writes CSV and CSV.report.json (what could not be filled) and prints the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.files import write_text
from vertex_jax.manifest.build import build_manifest, summary
from vertex_jax.tasks import DOMAINS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.manifest", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder of DICOM (and PNG/JPEG/TIFF) files, searched recursively")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--labels", help="CSV with pvf/osteo (and split, age, sex, bmi) per image, study or patient")
    p.add_argument("--domain", choices=DOMAINS, default="xray")
    return add_verbosity(p)


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    built = build_manifest(args.folder, args.out, labels=args.labels, domain=args.domain)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, built.table.to_csv(index=False))
    write_text(Path(f"{out}.report.json"), json.dumps(built.report, indent=1) + "\n")
    print("\n".join(summary(built.report)))
    print(f"wrote {out} ({len(built.table)} row(s)) and {out}.report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
