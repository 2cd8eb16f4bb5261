"""The latency cache: an entry is found again only by the key of what it measured, invalid or tampered
files are ignored (and never executed), contended figures are never stored, and `dse latency list` /
`dse latency clear` work through the real CLI."""

import json

from dse.latency_cache import KEY_LENGTH, LatencyCache, cache_key

from .test_cli import dse

ARCH = {"depth": 2, "width": 16, "heads": 2, "mlp_ratio": 4.0}
GEOMETRY = {"image_size": 8, "channels": 1, "num_classes": 10, "patch_size": 2}
PROTOCOL = {"runtime": "torch", "num_images": 64, "batch": 32, "guidance": 1.5, "repeats": 3}
FINGERPRINT = {"device": "Some CPU", "torch": "2.14.1", "threads": 2}
RESULT = {"latency_s": 0.25, "latency_per_image_ms": 3.9, "latency_s_std": 0.0125, "latency_contended": False,
          "latency_num_images": 64, "latency_batch": 32, "latency_device": "cpu", "latency_spread": 0.04}


def _put(cache, result=RESULT, **changes):
    parts = {"arch": ARCH, "geometry": GEOMETRY, "protocol": PROTOCOL, "fingerprint": FINGERPRINT, **changes}
    key = cache_key(*parts.values())
    return key, cache.put(key, **parts, result=result)


def test_an_entry_is_found_by_its_key_and_only_by_it(tmp_path):
    cache = LatencyCache(tmp_path / "c")
    key, entry = _put(cache)
    assert len(key) == KEY_LENGTH and entry is not None
    assert cache.get(key)["result"]["latency_s"] == 0.25
    # anything the latency depends on gives another key
    for change in ({"arch": {**ARCH, "width": 32}}, {"geometry": {**GEOMETRY, "image_size": 32}},
                   {"protocol": {**PROTOCOL, "batch": 64}}, {"protocol": {**PROTOCOL, "runtime": "onnxruntime"}},
                   {"fingerprint": {**FINGERPRINT, "threads": 1}}, {"fingerprint": {**FINGERPRINT, "device": "GPU"}}):
        parts = {"arch": ARCH, "geometry": GEOMETRY, "protocol": PROTOCOL, "fingerprint": FINGERPRINT, **change}
        other = cache_key(*parts.values())
        assert other != key and cache.get(other) is None


def test_contended_or_invalid_results_are_never_stored(tmp_path):
    cache = LatencyCache(tmp_path / "c")
    assert _put(cache, {**RESULT, "latency_contended": True})[1] is None
    for bad in ({**RESULT, "latency_s": float("nan")}, {**RESULT, "latency_s": -1.0}, {**RESULT, "latency_s": "0.2"}):
        assert _put(cache, bad)[1] is None
    assert cache.entries() == [] and not (tmp_path / "c").exists()


def test_a_tampered_damaged_or_foreign_file_is_ignored(tmp_path):
    cache = LatencyCache(tmp_path / "c")
    key, _ = _put(cache)
    path = cache.path(key)
    entry = json.loads(path.read_text())
    # an edited figure under the same key still passes (the key is of what was measured, not the figure) ...
    # ... but an entry whose description no longer matches its key is not used
    path.write_text(json.dumps({**entry, "arch": {**ARCH, "width": 64}}))
    assert cache.get(key) is None
    path.write_text("{not json")
    assert cache.get(key) is None
    path.write_text(json.dumps({**entry, "format": "something-else"}))
    assert cache.get(key) is None
    path.write_text(json.dumps({**entry, "result": {**RESULT, "latency_contended": True}}))
    assert cache.get(key) is None
    (tmp_path / "c" / "notes.json").write_text("{}")
    assert cache.entries() == []


def test_a_key_that_is_no_hex_digest_cannot_name_a_path(tmp_path):
    cache = LatencyCache(tmp_path / "c")
    import pytest

    for bad in ("../../etc/passwd", "x" * KEY_LENGTH, ""):
        with pytest.raises(ValueError):
            cache.path(bad)


def test_list_and_clear_through_the_cli(tmp_path):
    results = tmp_path / "results"
    cache = LatencyCache.of_results(results)
    _put(cache)
    _put(cache, arch={**ARCH, "depth": 3})
    listed = dse("latency", "list", "--results-dir", str(results), "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert sorted(e["arch"]["depth"] for e in entries) == [2, 3]
    table = dse("latency", "list", "--results-dir", str(results))
    assert "d2-w16-h2" in table.stdout and "d3-w16-h2" in table.stdout and "0.25" in table.stdout
    other = tmp_path / "keep.json"
    other.write_text("{}")
    cleared = dse("latency", "clear", "--results-dir", str(results))
    assert cleared.returncode == 0 and "removed 2" in cleared.stdout
    assert cache.entries() == [] and other.is_file()
    empty = dse("latency", "list", "--results-dir", str(results))
    assert empty.returncode == 0 and "empty" in empty.stdout
