from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_cli.config import PreprocessConfig
from saliency_cli.data import ImageDataset, collate, load_image, preprocess
from saliency_cli.discovery import discover
from saliency_cli.errors import InputError, SaliencyError
from saliency_cli.loading import ThreadedLoader, default_workers, make_loader


def make_png(path, size=(20, 10), color=(200, 30, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_folder_walk_is_recursive_and_sorted(tmp_path):
    for rel in ["b.png", "a/z.png", "a/b.jpg", "c/d/e.png", "A.png"]:
        make_png(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("x")
    found = discover([str(tmp_path)])
    assert [i.key for i in found.items] == ["A", "a/b", "a/z", "b", "c/d/e"]
    assert found.skipped == [str(tmp_path / "notes.txt")]


def test_several_arguments_prefix_their_names(tmp_path):
    make_png(tmp_path / "one" / "x.png")
    make_png(tmp_path / "two" / "x.png")
    single = make_png(tmp_path / "solo.jpg")
    found = discover([str(tmp_path / "one"), str(tmp_path / "two"), str(single)])
    assert [i.key for i in found.items] == ["one/x", "two/x", "solo"]


def test_same_stem_different_suffix_do_not_collide(tmp_path):
    make_png(tmp_path / "a.png")
    make_png(tmp_path / "a.jpg")
    make_png(tmp_path / "b.png")
    assert [i.key for i in discover([str(tmp_path)]).items] == ["a.jpg", "a.png", "b"]


def test_stdin_keeps_order_and_stays_inside_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = ["z.png\n", "sub/a.png\n", "\n", "../../x.png\n", "/abs/olute.png\r\n"]
    keys = [i.key for i in discover(["-"], stdin=io.StringIO("".join(lines))).items]
    assert len(keys) == 4 and keys[:3] == ["z", "sub/a", "__/__/x"]  # the blank line skipped, the order kept
    assert all(".." not in k.split("/") and not k.startswith("/") for k in keys)
    assert keys[3].endswith("abs/olute")


def test_inputs_under_a_tmp_folder_stay_out_of_the_writers_tmp(tmp_path):
    """OUT/.tmp is emptied at the end of every run: no output may land there
    (hidden folders are walked only with --include-hidden)."""
    make_png(tmp_path / ".tmp" / "manifest" / "x.png")
    make_png(tmp_path / "other" / ".tmp" / "y.png")  # deeper down it is harmless
    keys = [i.key for i in discover([str(tmp_path)], hidden=True).items]
    assert keys == ["_tmp/manifest/x", "other/.tmp/y"]


def test_missing_argument_is_an_error(tmp_path):
    with pytest.raises(SaliencyError, match="no such file or folder"):
        discover([str(tmp_path / "missing")])


def test_symlink_loop_is_walked_once(tmp_path):
    make_png(tmp_path / "d" / "x.png")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    assert [i.key for i in discover([str(tmp_path / "d")]).items] == ["x"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"hello, not an image", "not an image"), (None, "cannot decode image")],
)
def test_bad_files_raise_input_error(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content is None:  # a truncated JPEG
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        content = buf.getvalue()[:300]
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_image(str(path))


def test_modes_become_rgb(tmp_path):
    cases = [("L", 128, (128, 128, 128)), ("RGBA", (10, 20, 30, 0), (10, 20, 30)), ("P", 3, (200, 100, 50)),
             ("CMYK", (0, 0, 0, 0), (255, 255, 255)), ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
             ("I;16", 65535, (255, 255, 255))]
    for i, (mode, value, rgb) in enumerate(cases):
        path = tmp_path / (f"{i}.png" if mode != "CMYK" else f"{i}.jpg")
        image = Image.new(mode, (8, 4), value)
        if mode == "P":
            image.putpalette([0, 0, 0] * 3 + [200, 100, 50])
        image.save(path)
        img = load_image(str(path))
        assert img.mode == "RGB" and img.size == (8, 4)
        assert img.getpixel((5, 2)) == rgb, (mode, value, img.getpixel((5, 2)))
    # 16-bit white stays white (PIL's own conversion would clip everything to 255 anyway,
    # but mid-grey must stay mid-grey)
    Image.new("I;16", (4, 4), 32768).save(tmp_path / "grey16.png")
    assert abs(int(np.asarray(load_image(str(tmp_path / "grey16.png")))[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(str(tmp_path / "rot.jpg")).size == (10, 30)


def test_stretch_keeps_the_whole_photo():
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # the photo's left edge red, its right edge blue: both must be in the input
    arr[:, -20:] = (0, 0, 255)
    tensor, box = preprocess(Image.fromarray(arr), PreprocessConfig(size=[64, 32]))
    assert tensor.shape == (3, 64, 32) and tensor.dtype == torch.uint8
    assert box == (0.0, 0.0, 300.0, 100.0)
    assert tensor[:, :, 0].tolist() == [[255] * 64, [0] * 64, [0] * 64]
    assert tensor[:, :, -1].tolist() == [[0] * 64, [0] * 64, [255] * 64]


def test_center_crop_box_maps_back_to_the_photo():
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, 150:] = 255  # right half white
    tensor, box = preprocess(Image.fromarray(arr), PreprocessConfig(size=[50, 50], resize="center-crop",
                                                                   crop_fraction=1.0))
    assert box == pytest.approx((100.0, 0.0, 200.0, 100.0))
    assert tensor[:, :, :20].float().mean() < 5 and tensor[:, :, 30:].float().mean() > 250


def test_dataset_reports_bad_items_without_raising(tmp_path):
    good = make_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    from saliency_cli.discovery import InputItem

    ds = ImageDataset([InputItem(str(good), "good"), InputItem(str(bad), "bad")],
                      PreprocessConfig(size=[16, 16]), keep_original=True)
    batch = collate([ds[0], ds[1]])
    assert batch.inputs.shape == (1, 3, 16, 16)
    assert batch.ok[0]["original"].shape == (10, 20, 3)
    assert batch.failed[0]["error"] == "empty file"


def test_default_workers_leave_torch_its_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_workers("cpu") == 0  # decoding in the main process: measured faster on 2 cores
    assert default_workers("cuda") == 2  # the model runs on the GPU: the CPU decodes meanwhile
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_workers("cpu") == 4 and default_workers("cuda") == 4


def test_the_output_folder_is_not_walked_and_a_file_named_twice_is_explained_once(tmp_path):
    make_png(tmp_path / "in" / "a.png")
    make_png(tmp_path / "in" / "out" / "a" / "gradient.png")  # an earlier run's output, inside the input
    assert [i.key for i in discover([str(tmp_path / "in")], exclude=tmp_path / "in" / "out").items] == ["a"]
    twice = [str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / ".." / "in" / "a.png")]
    assert [i.path for i in discover(twice).items] == twice[:1]


def test_threaded_loader_gives_the_batches_of_a_single_process_loader(tmp_path, monkeypatch):
    from saliency_cli.discovery import InputItem

    items = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        if i == 3:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(np.full((10 + i, 20, 3), 30 * i, dtype=np.uint8)).save(path)
        items.append(InputItem(str(path), str(i)))
    ds = ImageDataset(items, PreprocessConfig(size=[16, 16]), keep_original=True)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    threaded = make_loader(ds, batch_size=3, workers=0, device_type="cpu")
    assert isinstance(threaded, ThreadedLoader) and threaded.threads == 3 and len(threaded) == 3
    plain = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=0, collate_fn=collate)
    for ours, theirs in zip(threaded, plain, strict=True):
        assert [it["index"] for it in ours.ok] == [it["index"] for it in theirs.ok]
        failed = [[(it["index"], it["error"]) for it in b.failed] for b in (ours, theirs)]
        assert failed[0] == failed[1]
        assert torch.equal(ours.inputs, theirs.inputs)
        assert all(torch.equal(a["original"], b["original"]) for a, b in zip(ours.ok, theirs.ok))
    assert [it["index"] for it in next(iter(threaded)).failed] == []  # item 3 fails in the second batch
    # worker processes asked for, a GPU, or one core: the DataLoader as before
    assert not isinstance(make_loader(ds, batch_size=3, workers=2, device_type="cpu"), ThreadedLoader)
    assert not isinstance(make_loader(ds, batch_size=3, workers=0, device_type="cuda"), ThreadedLoader)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert not isinstance(make_loader(ds, batch_size=3, workers=0, device_type="cpu"), ThreadedLoader)


def test_threaded_loader_leaves_no_thread_when_the_run_stops_early(tmp_path):
    import threading

    from saliency_cli.discovery import InputItem

    items = [InputItem(str(make_png(tmp_path / f"{i}.png")), str(i)) for i in range(6)]
    ds = ImageDataset(items, PreprocessConfig(size=[16, 16]), keep_original=False)
    def decoding() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("saliency-decode")}

    before = decoding()  # another test's loader may still be waiting for the garbage collector
    batches = iter(ThreadedLoader(ds, batch_size=2, threads=2))
    assert len(next(batches).ok) == 2
    assert decoding() - before
    batches.close()  # what a `for` loop left by an exception does
    assert not decoding() - before


def test_threaded_loader_on_a_borrowed_pool_cancels_its_queued_decoding_and_leaves_the_pool_open(tmp_path):
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from saliency_cli.discovery import InputItem

    items = [InputItem(str(make_png(tmp_path / f"{i}.png")), str(i)) for i in range(6)]
    started, release = [], threading.Event()

    class Interrupted(ImageDataset):
        def __getitem__(self, index):
            started.append(index)
            if index == 3:  # Ctrl-C while the main thread waits for this batch
                threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
                release.wait(10)
            return super().__getitem__(index)

    ds = Interrupted(items, PreprocessConfig(size=[16, 16]), keep_original=False)
    with ThreadPoolExecutor(1) as pool:  # one thread, held by image 3: 4 and 5 wait in the queue
        batches = iter(ThreadedLoader(ds, batch_size=3, threads=1, pool=pool))
        assert [it["index"] for it in next(batches).ok] == [0, 1, 2]
        with pytest.raises(KeyboardInterrupt):
            next(batches)
        release.set()
        assert pool.submit(lambda: "open").result() == "open"
    assert started == [0, 1, 2, 3]  # 4 and 5 were cancelled, not decoded


def test_normalize_is_the_formula_to_the_bit_and_leaves_its_input_alone():
    from saliency_cli.config import Config
    from saliency_cli.data import normalize

    cfg = Config().preprocess
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    uint8 = torch.randint(0, 256, (2, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for x in (uint8, uint8.contiguous(memory_format=torch.channels_last), uint8.float()):
        before = x.clone()
        out = normalize(x, cfg)
        assert torch.equal(out, (x.float() / 255.0 - mean) / std) and torch.equal(x, before)
        assert out.dtype == torch.float32 and out.stride() == x.stride()
