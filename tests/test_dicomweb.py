"""PACS to PACS: a real Orthanc with its DICOMweb plugin holds the studies; ``predict --input
dicomweb://…`` fetches them (QIDO-RS + WADO-RS), scores them, and stores the report and the
capture back (STOW-RS), where a query finds them; sending a study twice duplicates nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import debian
from checkpoints import write_checkpoint
from vertex_jax.dicomweb.address import is_dicomweb, parse_address
from vertex_jax.errors import InputDataError
from vertex_jax.predict.__main__ import main as predict
from vertex_jax.synthetic.dicom_write import write_dicom

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc (HTTP only) with DICOMweb at /dicom-web; its base URL."""
    debian.require({ORTHANC: "orthanc", PLUGIN: "orthanc-dicomweb"})
    folder = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {"Name": "vertex-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [PLUGIN],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    server = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            _get(base + "/system")
            break
        except OSError:
            assert server.poll() is None, (folder / "orthanc.log").read_text()
            time.sleep(0.1)
    yield base
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _upload(base: str, path: Path) -> None:
    """Store a file through Orthanc's own REST API (not through the code under test)."""
    request = urllib.request.Request(base + "/instances", data=path.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["Status"] in ("Success", "AlreadyStored")


def _instances(base: str, study: str) -> list[pydicom.Dataset]:
    """The study's instances as a QIDO-RS query answers them."""
    return [pydicom.Dataset.from_json(item) for item in _get(f"{base}/dicom-web/studies/{study}/instances")]


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory):
    """Two studies of patient P7 (one image each) and one of another patient, in Orthanc."""
    folder = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(3)
    files = []
    for name, patient in (("a", "P7"), ("b", "P7"), ("c", "P8")):
        image = (rng.random((180, 90)) * 4095).astype(np.uint16)
        write_dicom(folder / f"{name}.dcm", image, bits_stored=12, patient_id=patient,
                    patient_sex="F", patient_age_years=70, compression="jpegls" if name == "b" else "none")
        _upload(orthanc, folder / f"{name}.dcm")
        files.append(folder / f"{name}.dcm")
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files], files


def test_the_address_names_the_server_and_the_filters():
    address = parse_address("dicomweb://pacs.local:8042/dicom-web/?PatientID=P7&StudyDate=20260101-")
    assert (address.url, address.filters) == ("http://pacs.local:8042/dicom-web",
                                              {"PatientID": "P7", "StudyDate": "20260101-"})
    assert parse_address("dicomwebs://h/rs").url == "https://h/rs"
    assert is_dicomweb("dicomweb://h/x") and not is_dicomweb("/data/dicoms") and not is_dicomweb("C:/x")
    for bad in ("dicomweb:///dicom-web", "dicomweb://h/x?PatientID=", "dicomweb://h/x?PatientID=1&PatientID=2"):
        with pytest.raises(InputDataError):
            parse_address(bad)


def test_studies_go_from_the_pacs_and_their_reports_come_back_once(orthanc, studies, tmp_path, capsys):
    sources, files = studies
    run = write_checkpoint(tmp_path / "run")
    address = f"dicomweb://127.0.0.1:{orthanc.rsplit(':', 1)[1]}/dicom-web?PatientID=P7"

    def score(out: Path) -> pd.DataFrame:
        assert predict(["--checkpoint", str(run), "--input", address, "--out", str(out / "scores.csv"),
                        "--dicom-out", str(out / "dicom"), "--stow", "--explain", str(out / "maps"),
                        "--no-progress", "--batch", "2"]) == 0
        return pd.read_csv(out / "scores.csv", dtype=str, keep_default_na=False).set_index("sop_instance_uid")

    first = score(tmp_path / "first")
    p7 = [ds for ds in sources if ds.PatientID == "P7"]
    assert sorted(first.index) == sorted(ds.SOPInstanceUID for ds in p7)  # P8's study is not taken
    for ds in p7:
        assert first.loc[ds.SOPInstanceUID, "study_instance_uid"] == ds.StudyInstanceUID
    printed = capsys.readouterr().out
    assert "2 studies from the DICOMweb server: 2 instance(s) retrieved" in printed, printed
    stored = {}
    for ds in p7:
        found = _instances(orthanc, ds.StudyInstanceUID)
        new = [x for x in found if x.SOPInstanceUID != ds.SOPInstanceUID]
        # the report and a capture per task of the one image, in the image's study, found by a query
        assert sorted(x.SOPClassUID.name for x in new) == ["Comprehensive SR Storage"] + [
            "Secondary Capture Image Storage"] * 2, found
        stored[ds.StudyInstanceUID] = sorted(x.SOPInstanceUID for x in new)

    # The same studies sent again, then scored again: nothing duplicated, nothing re-scored of ours.
    for path in files:
        _upload(orthanc, path)
    second = score(tmp_path / "second")
    printed = capsys.readouterr().out
    # its own spool: the two images fetched again; the stored reports and captures left out
    assert ("2 studies from the DICOMweb server: 2 instance(s) retrieved, 0 already in" in printed
            and "6 skipped (a SR series ×2, an output of vertex_jax ×4)" in printed), printed
    assert "stored 6 instance(s)" in printed
    pd.testing.assert_frame_equal(first.drop(columns="path"), second.drop(columns="path"))
    for ds in p7:
        assert sorted(x.SOPInstanceUID for x in _instances(orthanc, ds.StudyInstanceUID)
                      if x.SOPInstanceUID != ds.SOPInstanceUID) == stored[ds.StudyInstanceUID]


def test_an_unreachable_server_is_one_block(tmp_path, capsys):
    from vertex_jax.cli import user_errors

    code = user_errors(predict)(["--checkpoint", str(tmp_path / "never-loaded"), "--input", f"dicomweb://127.0.0.1:{_free_port()}/dicom-web",
                                 "--out", str(tmp_path / "s.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the DICOMweb server" in err and "Traceback" not in err, err
