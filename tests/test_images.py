"""edgeprune.core.images: ImageNet-style and flat folders, the DeiT preprocessing, unreadable
files skipped and counted, --limit across classes, the demo folder."""

import pytest
import torch
from PIL import Image

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    batches,
    preprocess_for,
    scan,
    write_demo_images,
)


def test_deit_preprocessing_resizes_shorter_side_then_center_crops(tmp_path):
    # 300×200 image: left half red, right half blue
    im = Image.new("RGB", (300, 200), (255, 0, 0))
    im.paste((0, 0, 255), (150, 0, 300, 200))
    pre = preprocess_for(224)
    assert pre.resize_to == 256 and pre.crop == 224
    t = pre(im)
    assert t.shape == (3, 224, 224)
    rgb = t * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    # shorter side 200 -> 256, so the width becomes 384; the crop keeps x in [80, 304):
    # the colour edge (x=192 after resizing) lands at column 112 of the crop
    assert rgb[0, 100, :100].min() > 0.98 and rgb[2, 100, :100].max() < 0.02
    assert rgb[2, 100, 125:].min() > 0.98 and rgb[0, 100, 125:].max() < 0.02
    assert rgb[0, 100, 111] > 0.5 > rgb[0, 100, 112]  # the edge falls between 111 and 112


def test_preprocess_overrides_and_checks():
    pre = Preprocess(32, resize=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    t = pre(Image.new("RGB", (50, 50), (255, 255, 255)))
    assert torch.allclose(t, torch.ones(3, 32, 32))
    assert pre.to_dict()["resize_shorter_side"] == 40
    with pytest.raises(EdgepruneError, match="smaller than the crop"):
        Preprocess(32, resize=16)
    with pytest.raises(EdgepruneError, match="positive"):
        Preprocess(32, std=(0.1, 0.0, 0.1))


def _tree(root):
    for c, colour in (("b_cat", (0, 0, 255)), ("a_dog", (255, 0, 0)), ("c_eel", (0, 255, 0))):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20 + i, 20), colour).save(root / c / f"{i}.png")
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "top.png")
    (root / "a_dog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_imagenet_style_labels_are_sorted_folder_indices(tmp_path):
    imgs = scan(_tree(tmp_path / "t"))
    assert imgs.labelled and imgs.classes == ["a_dog", "b_cat", "c_eel"]
    assert imgs.ignored == 1  # top.png outside the class folders
    by_class = {imgs.files[i].parent.name: imgs.labels[i] for i in range(len(imgs.files))}
    assert by_class == {"a_dog": 0, "b_cat": 1, "c_eel": 2}
    skipped = []
    got = list(batches(imgs, preprocess_for(16), 4, skipped))
    assert [p.name for p in skipped] == ["broken.jpg"]  # skipped and counted, not fatal
    labels = torch.cat([b.labels for b in got])
    assert len(labels) == 9
    # the red images are class 0 (a_dog): channel 0 high
    x = torch.cat([b.images for b in got])
    assert (x[labels == 0][:, 0] > 2.0).all() and (x[labels == 1][:, 2] > 2.0).all()
    with pytest.raises(EdgepruneError, match="cannot read image"):
        list(batches(imgs, preprocess_for(16), 4, strict=True))


def test_limit_takes_every_class_first(tmp_path):
    imgs = scan(_tree(tmp_path / "t")).limit(4)
    assert sorted({imgs.labels[i] for i in range(4)}) == [0, 1, 2]
    with pytest.raises(EdgepruneError, match="at least 1"):
        scan(tmp_path / "t").limit(0)


def test_flat_folder_is_unlabelled_and_empty_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    for n in ("b.png", "a.JPG"):
        Image.new("RGB", (9, 9)).save(tmp_path / "flat" / n, format="PNG")
    imgs = scan(tmp_path / "flat")
    assert not imgs.labelled and [p.name for p in imgs.files] == ["a.JPG", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepruneError, match="no PNG/JPEG images"):
        scan(tmp_path / "empty")
    with pytest.raises(EdgepruneError, match="not a folder"):
        scan(tmp_path / "nope")


def test_demo_images_cli_writes_an_imagenet_style_folder(cli, tmp_path):
    code, out, err = cli(
        "demo-images", tmp_path / "d", "--classes", "3", "--per-class", "2", "--size", "24"
    )
    assert code == 0, err
    imgs = scan(tmp_path / "d")
    assert imgs.classes == ["class_000", "class_001", "class_002"] and len(imgs.files) == 6
    x = torch.cat([b.images for b in batches(imgs, preprocess_for(16), 8)])
    assert len({tuple(v.flatten()[:50].tolist()) for v in x}) == 6  # no two images equal
    with pytest.raises(EdgepruneError, match="not empty"):
        write_demo_images(tmp_path / "d")
