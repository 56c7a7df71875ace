"""DICOMweb in and out: fetch studies from a PACS (QIDO-RS + WADO-RS) into a local folder for
``predict``, and store its DICOM outputs back (STOW-RS). Uses ``dicomweb-client``; no JAX."""
