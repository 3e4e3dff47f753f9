from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saliency_cli.writer import MANIFEST, Writer, finished_methods, output_files, read_manifest


def test_npy_and_png_round_trip(tmp_path):
    writer = Writer(tmp_path)
    arr = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    writer.save_npy("a/b/m.npy", arr)
    writer.save_png("a/b/m.png", Image.new("RGB", (7, 5), (1, 2, 3)))
    writer.close()
    loaded = np.load(tmp_path / "a/b/m.npy")
    assert loaded.dtype == np.float32 and np.array_equal(loaded, arr)
    assert Image.open(tmp_path / "a/b/m.png").getpixel((0, 0)) == (1, 2, 3)
    assert not (tmp_path / ".tmp").exists()


def test_a_failed_write_leaves_no_file(tmp_path):
    writer = Writer(tmp_path)

    def half_then_crash(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        writer._atomic("x/out.npy", half_then_crash)
    writer.close()
    assert not (tmp_path / "x" / "out.npy").exists()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_previous_file_survives_a_failed_rewrite(tmp_path):
    writer = Writer(tmp_path)
    writer.save_npy("k/m.npy", np.ones(3, np.float32))
    with pytest.raises(OSError):
        writer._atomic("k/m.npy", lambda p: (p.write_bytes(b"x"), (_ for _ in ()).throw(OSError("x"))))
    writer.close()
    assert np.array_equal(np.load(tmp_path / "k/m.npy"), np.ones(3))


def test_manifest_in_order_with_errors_recorded(tmp_path):
    writer = Writer(tmp_path, threads=4)
    seen = []
    writer.on_record = seen.append
    for i in range(30):
        jobs = [lambda i=i: writer.save_npy(f"k{i}/m.npy", np.full(2, i, np.float32))]
        if i == 7:
            jobs.append(lambda: (_ for _ in ()).throw(PermissionError("read-only")))
        writer.submit({"input": f"{i}.png", "key": f"k{i}", "status": "ok"}, jobs)
    writer.close()
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["key"] for r in records] == [f"k{i}" for i in range(30)]
    assert records[7]["status"] == "error" and "read-only" in records[7]["error"]
    assert writer.counts == {"ok": 29, "error": 1}
    assert seen == records


def test_manifest_reader_skips_a_torn_last_line(tmp_path):
    good = {"key": "a", "status": "ok", "outputs": {}}
    (tmp_path / MANIFEST).write_text(json.dumps(good) + "\n" + '{"key": "b", "sta')
    assert read_manifest(tmp_path) == {"a": good}


def test_finished_methods_need_every_expected_file(tmp_path):
    files = output_files("img", "gradient", png=True, npy=True)
    record = {"key": "img", "status": "ok", "outputs": {"gradient": files}}
    expected = {"gradient": files}
    assert finished_methods(tmp_path, record, expected) == set()
    for rel in files.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert finished_methods(tmp_path, record, expected) == {"gradient"}
    assert finished_methods(tmp_path, {**record, "status": "error"}, expected) == set()
    assert finished_methods(tmp_path, record, {"smoothgrad": output_files("img", "smoothgrad", png=True,
                                                                          npy=False)}) == set()


def test_queued_images_are_bounded_in_bytes(tmp_path):
    """Big photos held for their overlays: a submit waits while more than
    max_pending_bytes are queued (one image alone never waits)."""
    import threading

    writer = Writer(tmp_path, threads=2, max_pending_bytes=100)
    release = threading.Event()
    writer.submit({"key": "a", "status": "ok"}, [lambda: release.wait(10)], nbytes=80)  # alone: no wait
    second = threading.Thread(target=writer.submit, args=({"key": "b", "status": "ok"}, [], 80))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "160 bytes queued: the second submit must wait for the first image"
    release.set()
    second.join(10)
    assert not second.is_alive() and writer.pending_bytes <= 80
    writer.close()
    assert [r["key"] for r in map(json.loads, (tmp_path / MANIFEST).read_text().splitlines())] == ["a", "b"]
