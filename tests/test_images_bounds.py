"""Images are bounded before they are decoded and resized (issue 33, item 2): a size
over the pixel limit or an aspect ratio past 20:1 is refused from the header, a file in
a format edgeprune does not read or a truncated/corrupt one is one line naming it, and
no bytes at all end in an internal error (fuzzed)."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import MAX_PIXELS, Preprocess, batches, read_image, scan

PRE = Preprocess(16)


def _png(w: int = 24, h: int = 20, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 90).save(buf, format="PNG")
    return buf.getvalue()


def _declared(png: bytes, w: int, h: int) -> bytes:
    """``png`` with its IHDR declaring ``w``×``h`` (CRC recomputed): the header PIL
    reads, the pixel data unchanged."""
    data = struct.pack(">II", w, h) + png[24:29]
    return png[:16] + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + png[33:]


def _encoded(fmt: str, w: int = 24, h: int = 20) -> bytes:
    buf = io.BytesIO()
    im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    im.save(buf, format=fmt)
    return buf.getvalue()


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(EdgepruneError) as e:
        read_image(path, PRE)
    msg = e.value.one_line()
    assert str(path) in msg and "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_a_long_thin_image_is_refused_before_the_resize(tmp_path):
    (tmp_path / "wide.png").write_bytes(_png(40000, 1, "L"))  # a few hundred bytes
    assert (tmp_path / "wide.png").stat().st_size < 400
    _refused(tmp_path / "wide.png", "40000×1", "20:1")
    (tmp_path / "strip.png").write_bytes(_png(100, 1, "L"))
    (tmp_path / "tall.png").write_bytes(_png(3, 100))
    _refused(tmp_path / "strip.png", "20:1")
    _refused(tmp_path / "tall.png", "20:1")
    (tmp_path / "ok.png").write_bytes(_png(40, 2))  # 20:1 exactly is read
    assert read_image(tmp_path / "ok.png", PRE).shape == (3, 16, 16)


def test_a_huge_declared_size_is_refused_from_the_header(tmp_path):
    assert MAX_PIXELS == 8192 * 8192
    for w, h in ((10_000, 9_000), (8193, 8192), (60_000, 60_000)):
        p = tmp_path / f"big_{w}x{h}.png"
        p.write_bytes(_declared(_png(), w, h))
        _refused(p, "pixels")


def test_only_the_formats_it_names_are_decoded(tmp_path):
    for fmt, name in (("GIF", "g.png"), ("TIFF", "t.jpg"), ("PPM", "p.bmp")):
        (tmp_path / name).write_bytes(_encoded(fmt))
        _refused(tmp_path / name, "cannot read image")
    for fmt, name in (("PNG", "a.png"), ("JPEG", "b.jpg"), ("BMP", "c.bmp"), ("WEBP", "d.webp")):
        (tmp_path / name).write_bytes(_encoded(fmt))
        assert read_image(tmp_path / name, PRE).shape == (3, 16, 16), fmt


def test_truncated_and_corrupt_files_are_skipped_or_one_line(cli, tmp_path):
    good = _encoded("JPEG", 40, 40)
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a_good.jpg").write_bytes(good)
    (d / "b_trunc.jpg").write_bytes(good[: len(good) // 2])
    (d / "c_wide.png").write_bytes(_png(400, 4))
    skipped: list[Path] = []
    got = list(batches(scan(d), PRE, 8, skipped))
    assert sum(len(b.indices) for b in got) == 1 and [p.name for p in skipped] == [
        "b_trunc.jpg",
        "c_wide.png",
    ]
    (d / "b_trunc.jpg").unlink()
    code, _, err = cli("calibrate", "deit_tiny:avit", "--images", d, "--out", tmp_path / "c.json")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "c_wide.png" in lines[0], err
    assert not (tmp_path / "c.json").exists()


def _mutations(rng: random.Random, bases: dict[str, bytes]):
    """(suffix, bytes): random bytes, truncations, byte flips, absurd declared sizes."""
    suffix, raw = rng.choice(list(bases.items()))
    kind = rng.randrange(5)
    if kind == 0:
        return suffix, rng.randbytes(rng.randrange(0, 600))
    if kind == 1:
        return suffix, raw[: rng.randrange(0, len(raw))]
    if kind == 2:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return suffix, bytes(b)
    if kind == 3:  # a PNG header declaring any size at all
        w, h = (rng.choice([0, 1, 7, 4096, 8192, 65535, 2**31 - 1, rng.randrange(2**32)])
                for _ in range(2))  # fmt: skip
        return ".png", _declared(bases[".png"], w, h)
    b = bytearray(bases[".jpg"])  # a JPEG frame header (SOF0) declaring any size
    at = b.index(b"\xff\xc0")
    b[at + 5 : at + 9] = struct.pack(">HH", rng.randrange(65536), rng.randrange(65536))
    return ".jpg", bytes(b)


def test_fuzz_images_load_or_refuse_in_one_line(tmp_path, fuzz_cases):
    """Every case either loads (a finite 3×16×16 tensor) or raises EdgepruneError naming
    the file; never another exception."""
    rng = random.Random(33)
    bases = {
        ".png": _encoded("PNG"),
        ".jpg": _encoded("JPEG"),
        ".bmp": _encoded("BMP"),
        ".webp": _encoded("WEBP"),
    }
    loaded = refused = 0
    for i in range(fuzz_cases):
        suffix, data = _mutations(rng, bases)
        p = tmp_path / f"case_{i}{suffix}"
        p.write_bytes(data)
        try:
            t = read_image(p, PRE)
        except EdgepruneError as e:
            assert str(p) in e.one_line(), e.one_line()
            refused += 1
            continue
        assert t.shape == (3, 16, 16) and torch.isfinite(t).all()
        loaded += 1
    assert loaded and refused  # both outcomes were reached
