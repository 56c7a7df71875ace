"""The preprocessing cache: content, fingerprint, resume after a crash, bad files."""

import json

import numpy as np
import pytest

from vertex_jax.data.cache import COMPLETE, build_cache, fingerprint
from vertex_jax.data.io import ImageReadError, read_image
from vertex_jax.data.manifest import load_manifest
from vertex_jax.data.preprocess import PreprocessConfig, preprocess

CFG = PreprocessConfig(canvas=(64, 32))


def test_cache_holds_the_preprocessed_canvases(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    cache = build_cache(df, tmp_path / "cache", CFG, workers=2, shard_size=5, progress=False)
    assert len(cache.index) == len(df) and len(cache.shard_paths) == 5
    import grain
    source = grain.sources.ArrayRecordDataSource(cache.shard_paths)
    for image_id, path in zip(df["image_id"][::4], df["path"][::4]):
        record = int(cache.records_for([image_id])[0])
        expected, geometry = preprocess(read_image(path).pixels, CFG)
        np.testing.assert_array_equal(cache.decode(source[record]), expected)
        assert cache.geometry(image_id) == geometry
    with pytest.raises(KeyError, match="nope"):
        cache.records_for(["nope"])


def test_finished_cache_is_reused_and_settings_change_rebuilds(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    first = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=8, progress=False)
    stamps = {p: (first.root / p).stat().st_mtime_ns for p in ("COMPLETE.json", "shard-00000.json")}
    again = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=8, progress=False)
    assert again.root == first.root
    assert {p: (first.root / p).stat().st_mtime_ns for p in stamps} == stamps
    other = build_cache(df, tmp_path / "cache", PreprocessConfig(canvas=(64, 32), border_crop=0.0),
                        workers=1, shard_size=8, progress=False)
    assert other.root != first.root
    # A changed image (new mtime) or a changed image list gives another fingerprint.
    import os
    st = os.stat(df["path"][0])
    os.utime(df["path"][0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint(df, CFG) != first.root.name
    assert fingerprint(df.iloc[1:], CFG) != first.root.name


def test_failed_build_never_looks_complete(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    open(df["path"][17], "wb").write(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError) as err:
        build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    assert "img017" in str(err.value)
    root = next((tmp_path / "cache").iterdir())
    assert not (root / COMPLETE).exists()
    done = sorted(p.name for p in root.glob("shard-*.json"))
    assert done == [f"shard-0000{i}.json" for i in range(3)]  # shards before the bad one finished
    assert not list(root.glob("shard-00003*"))  # the failed shard left nothing visible


def test_interrupted_build_resumes_only_missing_shards(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    cache = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    root = cache.root
    before = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*")}
    # What a kill in the middle of shard 2 leaves: no COMPLETE, no shard-2 files, a temp file.
    (root / COMPLETE).unlink()
    (root / "shard-00002.json").unlink()
    (root / "shard-00002.array_record").unlink()
    (root / "shard-00002.array_record.tmp").write_bytes(b"half")
    again = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*")}
    assert again.root == root and len(again.index) == len(df)
    assert set(after) == set(before)
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == ["shard-00002.array_record", "shard-00002.json"]
    pd_equal = again.index.drop(columns="geometry").equals(cache.index.drop(columns="geometry"))
    assert pd_equal


def test_skip_mode_lists_unreadable_files(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    open(df["path"][5], "wb").write(b"")
    open(df["path"][9], "wb").write(b"not an image at all")
    cache = build_cache(df, tmp_path / "cache", CFG, workers=2, shard_size=4, skip_errors=True,
                        progress=False)
    assert len(cache.index) == len(df) - 2
    assert sorted(cache.failures["image_id"]) == ["img005", "img009"]
    assert (cache.root / "unreadable.csv").exists()
    assert json.loads((cache.root / COMPLETE).read_text())["num_failures"] == 2
    # Asking for the strict mode on a cache with recorded failures names a bad file.
    with pytest.raises(ImageReadError, match="img00[59]"):
        build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=4, progress=False)
