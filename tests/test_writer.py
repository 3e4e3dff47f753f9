from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saliency_cli.outputs import MANIFEST, npy_path, png_path
from saliency_cli.plan import finished_methods
from saliency_cli.records import SCHEMA_VERSION, Files, Record, read_manifest
from saliency_cli.writer import Writer


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
        writer.submit(Record(input=f"{i}.png", key=f"k{i}"), jobs)
    writer.close()
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["key"] for r in records] == [f"k{i}" for i in range(30)]
    assert records[7]["status"] == "error" and "read-only" in records[7]["error"]
    assert all(r["schema_version"] == SCHEMA_VERSION for r in records)
    assert writer.counts == {"ok": 29, "error": 1}
    assert [r.to_json() for r in seen] == records


def test_manifest_reader_skips_a_torn_last_line(tmp_path):
    good = {"schema_version": SCHEMA_VERSION, "input": "a.png", "key": "a", "status": "ok"}
    (tmp_path / MANIFEST).write_text(json.dumps(good) + "\n" + '{"key": "b", "sta')
    assert {k: r.to_json() for k, r in read_manifest(tmp_path).items()} == {"a": good}


def test_finished_methods_need_every_expected_file(tmp_path):
    files = Files(npy=npy_path("img", "gradient"), pngs=[png_path("img", "gradient")])
    record = Record(input="img.png", key="img", outputs={"gradient": files})
    expected = {"gradient": files}
    assert finished_methods(tmp_path, record, expected) == set()
    writer = Writer(tmp_path)
    writer.save_npy(files.npy, np.zeros((4, 5), np.float32))
    writer.save_png(files.pngs[0], Image.new("RGB", (5, 4)))
    writer.close()
    assert finished_methods(tmp_path, record, expected) == {"gradient"}
    (tmp_path / files.npy).write_bytes((tmp_path / files.npy).read_bytes()[:-1])  # one byte short
    assert finished_methods(tmp_path, record, expected) == set()
    writer = Writer(tmp_path)
    writer.save_npy(files.npy, np.zeros((4, 5), np.float32))
    writer.close()
    record.fail("broken")
    assert finished_methods(tmp_path, record, expected) == set()
    record.status = "ok"
    assert finished_methods(tmp_path, record, {"smoothgrad": Files(pngs=[png_path("img", "smoothgrad")])}) == set()


def test_queued_images_are_bounded_in_bytes(tmp_path):
    """Big photos held for their overlays: a submit waits while more than
    max_pending_bytes are queued (one image alone never waits)."""
    import threading

    writer = Writer(tmp_path, threads=2, max_pending_bytes=100)
    release = threading.Event()
    writer.submit(Record(input="a", key="a"), [lambda: release.wait(10)], nbytes=80)  # alone: no wait
    second = threading.Thread(target=writer.submit, args=(Record(input="b", key="b"), [], 80))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "160 bytes queued: the second submit must wait for the first image"
    release.set()
    second.join(10)
    assert not second.is_alive() and writer.pending_bytes <= 80
    writer.close()
    assert [r["key"] for r in map(json.loads, (tmp_path / MANIFEST).read_text().splitlines())] == ["a", "b"]


def test_records_of_the_first_format_read_and_round_trip():
    """Manifests written before `schema_version` existed resume: same fields,
    a classifier's `png` a name, a detector's a list (one per detection)."""
    old = [
        {"input": "a.png", "key": "a", "status": "ok", "size": [451, 300],
         "outputs": {"gradient": {"png": "a/gradient.png", "npy": "a/gradient.npy"}},
         "settings": {"gradient": "3f9c2a0b17d4e6a1"},
         "predictions": [{"class": 285, "label": "Egyptian cat", "prob": 0.799}],
         "target": {"class": 285, "label": "Egyptian cat", "prob": 0.799},
         "seconds": {"decode": 0.007, "gradient": 0.23}, "grid": "a/grid.png"},
        {"input": "b.png", "key": "b", "status": "ok", "size": [512, 512],
         "outputs": {"d-rise": {"npy": "b/d-rise.npy", "png": ["b/d-rise-0.png", "b/d-rise-1.png"]}},
         "detections": [{"index": 0, "box": [0, 0, 5, 5], "class": 1, "label": "cup", "score": 0.9,
                         "png": "b/d-rise-0.png"}]},
        {"input": "c.png", "key": "c", "status": "ok", "outputs": {"d-rise": {"npy": "c/d-rise.npy", "png": []}}},
        {"input": "d.png", "key": "d", "status": "error", "error": "empty file"},
    ]
    for data in old:
        record = Record.from_json(data)
        assert record.schema_version == 0
        assert record.to_json() == {"schema_version": 0, **data}
    assert Record.from_json(old[0]).files() == ["a/gradient.png", "a/gradient.npy", "a/grid.png"]
    assert Record.from_json(old[1]).outputs["d-rise"].pngs == ["b/d-rise-0.png", "b/d-rise-1.png"]
    assert Record.from_json({"input": "x"}) is None and Record.from_json([1]) is None


@pytest.mark.parametrize("cores, cpu, cuda", [(1, 1, 1), (2, 1, 2), (16, 4, 8), (64, 8, 8)])
def test_writer_threads_leave_the_cpu_to_the_model(monkeypatch, cores, cpu, cuda):
    """Model on the CPU: a quarter of the cores, at least one; on CUDA: up to 8."""
    from saliency_cli import writer

    monkeypatch.setattr(writer.os, "cpu_count", lambda: cores)
    assert (writer.default_threads("cpu"), writer.default_threads("cuda")) == (cpu, cuda)
