"""`edgeprune calibrate SRC --images DIR`: the image loader, the command on a small
checkpoint, and one-line errors for folders without usable images."""

import json

import pytest
import torch

from edgeprune.core.images import load_images


def _write_images(folder):
    from PIL import Image

    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "red.png")
    Image.new("L", (16, 16), 128).save(folder / "gray.PNG")
    Image.new("RGBA", (20, 50), (0, 255, 0, 10)).save(folder / "green.png")
    Image.new("RGB", (33, 33), (0, 0, 255)).save(folder / "blue.jpg", quality=100)
    (folder / "notes.txt").write_text("not an image, skipped")
    return folder


def test_load_images_normalises_and_resizes(tmp_path):
    folder = _write_images(tmp_path / "imgs")
    imgs = load_images(folder, 32)
    assert imgs.shape == (4, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    # sorted by name: blue.jpg, gray.PNG, green.png, red.png; solid colours stay solid
    expect = {
        1: torch.tensor([128, 128, 128]) / 255.0,
        2: torch.tensor([0.0, 1.0, 0.0]),
        3: torch.tensor([1.0, 0.0, 0.0]),
    }
    for i, rgb in expect.items():
        want = ((rgb - mean) / std).view(3, 1, 1).expand(3, 32, 32)
        assert (imgs[i] - want).abs().max().item() <= 1e-5
    blue = imgs[0] * std.view(3, 1, 1) + mean.view(3, 1, 1)
    assert blue[2].min() > 0.95 and blue[:2].max() < 0.05  # JPEG: nearly exact


def test_calibrate_cli_with_images(cli, write_ckpt, tmp_path):
    from tests.conftest import make_state_dict

    ckpt = write_ckpt(make_state_dict("deit_tiny"), "tiny-1-2.pth")
    folder = _write_images(tmp_path / "imgs")
    calib = tmp_path / "c.json"
    code, out, err = cli("calibrate", ckpt, "--images", folder, "--out", calib)
    assert code == 0, err
    data = json.loads(calib.read_text())
    assert data["inputs"] == 4 and data["report"]["inputs"] == 4
    assert (data["gate_scale"], data["gate_center"]) == (1.0, 2.0)  # from the file name
    counts = data["counts"]
    assert counts[0] == 197 and len(counts) == 12
    assert all(b <= a for a, b in zip(counts, counts[1:], strict=False))
    assert "over 4 inputs" in out


def _empty(d):
    d.mkdir()


def _only_text(d):
    d.mkdir()
    (d / "a.txt").write_text("hello")
    (d / "b.csv").write_text("1,2")


def _text_as_png(d):
    d.mkdir()
    (d / "a.png").write_text("this is not a PNG")


def _truncated_png(d):
    from PIL import Image

    d.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "full.png").unlink()
    (d / "cut.png").write_bytes(data[: len(data) // 2])


def _folder_named_png(d):
    (d / "x.png").mkdir(parents=True)


@pytest.mark.parametrize(
    "make, needle",
    [
        (_empty, "no PNG/JPEG images"),
        (_only_text, "no PNG/JPEG images"),
        (_text_as_png, "cannot read image"),
        (_truncated_png, "cannot read image"),
        (_folder_named_png, "no PNG/JPEG images"),
        (None, "is not a folder"),
    ],
    ids=["empty", "only-text", "text-as-png", "truncated-png", "folder-named-png", "missing"],
)
def test_calibrate_bad_images_one_line(cli, tmp_path, make, needle):
    folder = tmp_path / "imgs"
    if make is not None:
        make(folder)
    calib = tmp_path / "c.json"
    code, out, err = cli("calibrate", "deit_tiny", "--images", folder, "--out", calib)
    errors = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("error:") and needle in errors[0]
    assert "Traceback" not in err
    assert not calib.exists()
