"""Image decoding, resize/crop protocols and data sets."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from tokbench.data import BadImage, DataUnavailable, iterate_batches, open_dataset, open_image, pil_to_tensor
from tokbench.protocols import get_protocol


def _rgb(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grey_16bit_palette_cmyk_la(tmp_path):
    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "g.png"))[..., 1], grey)

    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 16-bit: k*257 -> k
    Image.fromarray(deep).save(tmp_path / "d.png")
    img = open_image(tmp_path / "d.png")
    assert img.mode == "RGB" and np.array_equal(np.asarray(img)[..., 0], grey)

    rgb = _rgb()
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    assert open_image(tmp_path / "p.png").mode == "RGB"

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = np.asarray(open_image(tmp_path / "c.jpg")).astype(int)
    assert out.shape == rgb.shape and np.abs(out - rgb).mean() < 8  # CMYK JPEG round trip

    la = Image.fromarray(grey, "L").convert("LA")
    la.save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").mode == "RGBA"


def test_exif_rotation_applied(tmp_path):
    rgb = _rgb(20, 50)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = open_image(tmp_path / "r.jpg")
    assert out.size == (20, 50)  # width and height swapped


def test_truncated_and_non_images_raise(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.jpg", "text.png"):
        with pytest.raises(BadImage, match=name):
            open_image(tmp_path / name)


@pytest.mark.parametrize("h,w", [(90, 130), (131, 90), (77, 77)])
def test_resize_crop_equals_torchvision(h, w):
    img = Image.fromarray(_rgb(h, w))
    ours = get_protocol("resize-crop").fn(img, 64)
    ref = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64)])(img)
    assert np.array_equal(np.asarray(ours), np.asarray(ref))


def test_adm_center_crop_matches_guided_diffusion_arithmetic():
    # guided-diffusion center_crop_arr: BOX halving while min side >= 2*size, BICUBIC to short side = size
    img = Image.fromarray(_rgb(300, 520))
    out = get_protocol("adm-center-crop").fn(img, 64)
    assert out.size == (64, 64)
    half = img.resize((260, 150), resample=Image.BOX)  # short side 300 >= 128: halve; 150 >= 128: again
    half = half.resize((130, 75), resample=Image.BOX)
    scale = 64 / 75
    ref = half.resize((round(130 * scale), round(75 * scale)), resample=Image.BICUBIC)
    a = np.asarray(ref)
    top, left = (a.shape[0] - 64) // 2, (a.shape[1] - 64) // 2
    assert np.array_equal(np.asarray(out), a[top : top + 64, left : left + 64])
    # a short side of exactly twice the target is halved (>=), then resized by a factor of 1
    img = Image.fromarray(_rgb(128, 200))
    half = np.asarray(img.resize((100, 64), resample=Image.BOX))
    assert np.array_equal(np.asarray(get_protocol("adm-center-crop").fn(img, 64)), half[:, 18:82])


def test_pad_square_pads_with_grey_127_around_the_centred_image():
    img = Image.new("RGB", (40, 20), "white")
    out = np.asarray(get_protocol("pad-square").fn(img, 40))
    assert (out[:8] == 127).all() and (out[-8:] == 127).all() and (out[12:28] == 255).all()


def test_every_protocol_returns_target_size():
    img = Image.fromarray(_rgb(33, 71)).convert("RGBA")
    for name in ("adm-center-crop", "resize-crop", "resize", "pad-square"):
        assert get_protocol(name).fn(img, 48).size == (48, 48), name


def test_samples_ship_with_the_wheels():
    ds = open_dataset("samples")
    assert len(ds) >= 12
    ids = [r.id for r in ds.records]
    assert "skimage/astronaut.png" in ids and "sklearn/china.jpg" in ids


def test_folder_with_classes_and_bad_files_is_counted(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(_rgb(40, 60, seed=i)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "9.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 7
    assert [r.label for r in ds.records] == [0, 0, 0, 1, 1, 1, 1]
    batches = list(iterate_batches(ds, "resize-crop", 32, batch_size=3, num_workers=0))
    assert sum(len(b.records) for b in batches) == 6
    skipped = [s for b in batches for s in b.skipped]
    assert len(skipped) == 1 and skipped[0][1].endswith("9.jpg")
    assert all(b.images.shape[1:] == (3, 32, 32) for b in batches)
    # resuming from a position yields the same images as the full pass
    tail = list(iterate_batches(ds, "resize-crop", 32, batch_size=3, start=3, num_workers=0))
    assert torch.equal(tail[0].images, torch.cat([b.images for b in batches])[3:6])


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailable, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataUnavailable, match="unset"):
        open_dataset("imagenet-val:${TOKBENCH_TEST_UNSET_VARIABLE}")
    with pytest.raises(DataUnavailable, match="unknown data source"):
        open_dataset("coco:/x")


def test_pil_to_tensor_range():
    t = pil_to_tensor(Image.fromarray(np.full((2, 3, 3), 255, np.uint8)))
    assert t.shape == (3, 2, 3) and t.max() == 1.0 and t.dtype == torch.float32


def test_imagenet_val_layouts(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    nested = tmp_path / "nested"
    for w in wnids:
        (nested / w).mkdir(parents=True)
        Image.fromarray(_rgb(8, 8)).save(nested / w / f"ILSVRC2012_val_{w}.JPEG")
    ds = open_dataset(f"imagenet-val:{nested}")
    assert [r.label for r in ds.records] == [0, 1, 2] and ds.class_names == wnids  # 3 classes: names are ids

    flat = tmp_path / "flat" / "val"
    flat.mkdir(parents=True)
    truth = {"ILSVRC2012_val_00000001": "n01484850", "ILSVRC2012_val_00000002": "n01440764"}
    for stem in truth:
        Image.fromarray(_rgb(8, 8)).save(flat / f"{stem}.JPEG")
    ds = open_dataset(f"imagenet-val:{flat}")
    assert [r.label for r in ds.records] == [None, None]  # no label file: unlabelled
    (flat.parent / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        + "".join(f"{k},{v} 10 20 30 40 {v} 1 2 3 4\n" for k, v in truth.items())
    )
    ds = open_dataset(f"imagenet-val:{flat}")
    # labels index the sorted WordNet ids, the same order as class sub-folders
    assert [r.label for r in ds.records] == [1, 0] and ds.class_names == ["n01440764", "n01484850"]


def _positions(batches):
    return [int(p) for b in batches for p in b.index] + [p for b in batches for p, _, _ in b.skipped]


def test_persistent_workers_follow_each_pass_positions(tmp_path):
    # the workers outlive a pass; every pass must still read the positions it was given, also after a
    # pass left half-read (a job that failed), and equal a one-off pass over the same positions
    from tokbench.data import BatchLoader

    for i in range(7):
        Image.fromarray(_rgb(40, 60, seed=i)).save(tmp_path / f"{i}.png")
    (tmp_path / "9.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    ds = open_dataset(f"folder:{tmp_path}")
    loader = BatchLoader(ds, "resize-crop", 32, batch_size=2, num_workers=1)
    try:
        assert loader.loader.persistent_workers
        first = list(loader.batches([0, 1, 2, 3, 4, 5, 6, 7]))
        it = loader.batches([6, 7, 0])
        next(it)  # abandoned after one batch
        assert list(loader.batches([])) == []  # a rank with nothing left to count
        second = list(loader.batches([5, 3, 7]))
        workers = loader.loader._iterator._workers  # noqa: SLF001
        third = list(loader.batches([1]))
        assert loader.loader._iterator._workers == workers  # the same processes served both passes
    finally:
        loader.close()
    assert sorted(_positions(first)) == list(range(8)) and [len(b.records) for b in first] == [2, 2, 2, 1]
    assert _positions(second) == [5, 3, 7] and [b.index.tolist() for b in second] == [[5, 3], []]
    assert second[1].skipped[0][1].endswith("9.jpg")
    assert _positions(third) == [1]
    once = list(iterate_batches(ds, "resize-crop", 32, batch_size=2, num_workers=0, positions=[5, 3, 7]))
    assert torch.equal(torch.cat([b.images for b in second]), torch.cat([b.images for b in once]))


def test_loader_cache_keeps_one_loader_per_data_protocol_and_size(tmp_path):
    from tokbench.data import LoaderCache

    Image.fromarray(_rgb(40, 60)).save(tmp_path / "a.png")
    ds, other = open_dataset(f"folder:{tmp_path}"), open_dataset(f"folder:{tmp_path}")
    cache = LoaderCache()
    a = cache.get(ds, "resize-crop", 32, 2, 0, False)
    assert cache.get(ds, "resize-crop", 32, 2, 0, False) is a
    b = cache.get(ds, "resize-crop", 48, 2, 0, False)
    assert b is not a and cache.get(other, "resize-crop", 48, 2, 0, False) is not b
    cache.close()
    assert cache.loader is None and cache.get(ds, "resize-crop", 32, 2, 0, False) is not a
