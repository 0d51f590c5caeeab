"""Image folders and the DeiT preprocessing: one implementation for every command that
reads images (``calibrate --images``, ``evaluate``, ``sensitivity``, ``finetune``).

Preprocessing (DeiT's evaluation transform, timm ``crop_pct`` 0.875): resize the
shorter side to ``round(crop / 0.875)`` (256 for 224) with bicubic interpolation, center
crop ``crop``² (the model's image size), scale to [0, 1], normalise with the ImageNet
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Each of these can be
overridden (``Preprocess``; ``--resize``, ``--mean``, ``--std`` on the CLI).

Folders: a folder holding sub-folders is **ImageNet-style** (torchvision's
``ImageFolder`` / timm convention): every sub-folder is a class, class index = position
of its name in the sorted list of sub-folder names (hidden ones, starting with ``.``,
are ignored), and its images are labelled with that index; images directly in the top
folder are then ignored (counted). A folder with no sub-folders is **unlabelled**: its
images are read in sorted name order. Images are ``.png``, ``.jpg``, ``.jpeg``,
``.bmp``, ``.webp`` files (any case), decoded only as those formats. A file that cannot
be decoded is skipped and counted (``strict=True``: an error instead, as ``calibrate``
wants).

Bounds: an image's size is read from its header before it is decoded; one over
``MAX_PIXELS`` (8192×8192) or longer than ``MAX_ASPECT`` (20:1) on one side is refused
as unreadable (a 196-byte PNG may declare 40000×1, which the resize would blow up).
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgeprune.core.atomic import Output, atomic_dir, check_outputs
from edgeprune.core.errors import EdgepruneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# the decoders tried, whatever the suffix says (WEBP where this PIL reads it)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
MAX_PIXELS = 8192 * 8192
MAX_ASPECT = 20.0
# what a broken file raises while PIL reads it: OSError (unidentified, truncated),
# SyntaxError/ValueError (broken chunks), EOFError, struct.error and zlib.error (short or
# bad data), DecompressionBombError (a declared size past PIL's own limit)
DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
    Image.DecompressionBombError, Image.DecompressionBombWarning,
)  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize`` (bicubic), center crop ``crop``², normalise.

    ``resize`` None: ``round(crop / 0.875)`` (DeiT: 256 for 224)."""

    crop: int = 224
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.crop < 1:
            raise EdgepruneError(f"crop size {self.crop} must be at least 1")
        if self.resize is not None and self.resize < self.crop:
            raise EdgepruneError(
                f"--resize {self.resize} is smaller than the crop {self.crop}",
                f"give at least {self.crop}",
            )
        for what, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise EdgepruneError(f"--{what} needs three finite numbers, got {list(v)}")
        if any(s <= 0 for s in self.std):
            raise EdgepruneError(f"--std {list(self.std)} must be positive")

    @property
    def resize_to(self) -> int:
        return self.resize if self.resize is not None else round(self.crop / CROP_PCT)

    def to_dict(self) -> dict:
        return {
            "resize_shorter_side": self.resize_to,
            "interpolation": self.interpolation,
            "center_crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def __call__(self, im) -> torch.Tensor:
        """A PIL image -> normalised float tensor 3×crop×crop."""

        check_size(im.size, "image")
        im = im.convert("RGB")
        w, h = im.size
        s = self.resize_to
        nw, nh = (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        im = im.crop((left, top, left + self.crop, top + self.crop))
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        t = data.view(self.crop, self.crop, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (t - mean) / std


def preprocess_for(
    img_size: int,
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocess:
    """The DeiT preprocessing for a model of ``img_size``, with any overrides."""
    return Preprocess(
        img_size,
        resize,
        tuple(mean) if mean is not None else IMAGENET_MEAN,
        tuple(std) if std is not None else IMAGENET_STD,
    )


@dataclass
class ImageSet:
    """The images of a folder: files, labels (None when unlabelled), class names."""

    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: list[str] = field(default_factory=list)
    ignored: int = 0  # image files outside the class folders of a labelled tree

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def limit(self, n: int | None) -> ImageSet:
        """The first ``n`` images in a fixed, class-interleaved order (so that a
        ``--limit`` of a labelled tree covers every class, not only the first)."""
        if n is None or n >= len(self.files):
            return self
        if n < 1:
            raise EdgepruneError(f"--limit {n} must be at least 1")
        order = list(range(len(self.files)))
        if self.labels is not None:
            rank: dict[int, int] = {}
            keyed = []
            for i in order:
                c = self.labels[i]
                keyed.append((rank.get(c, 0), c, i))
                rank[c] = rank.get(c, 0) + 1
            order = [i for _, _, i in sorted(keyed)]
        keep = sorted(order[:n])
        labels = [self.labels[i] for i in keep] if self.labels is not None else None
        return ImageSet(
            self.root, [self.files[i] for i in keep], labels, self.classes, self.ignored
        )

    def describe(self) -> dict:
        return {
            "folder": str(self.root),
            "images": len(self.files),
            "labelled": self.labelled,
            "classes": len(self.classes),
            "ignored_top_level_files": self.ignored,
        }


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def scan(folder: str | Path) -> ImageSet:
    """The images of ``folder`` (see the module docstring); an error when it has none."""
    root = Path(folder)
    if not root.is_dir():
        raise EdgepruneError(f"--images {root} is not a folder")
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise EdgepruneError(f"cannot list {root} ({e.strerror})") from None
    dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    top = [p for p in entries if _is_image(p)]
    if not dirs:
        files, labels, classes, ignored = top, None, [], 0
    else:
        classes = [d.name for d in dirs]
        files, labels = [], []
        for idx, d in enumerate(dirs):
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            files += found
            labels += [idx] * len(found)
        ignored = len(top)
    if not files:
        raise EdgepruneError(f"no PNG/JPEG images in {root}")
    return ImageSet(root, files, labels, classes, ignored)


def check_size(size: tuple[int, int], name: object) -> None:
    """Refuse an image of ``size`` (w, h) over ``MAX_PIXELS`` or ``MAX_ASPECT``."""
    w, h = size
    if w < 1 or h < 1 or w * h > MAX_PIXELS:
        raise EdgepruneError(
            f"cannot read image {name} ({w}×{h} pixels; at most {MAX_PIXELS:,} are read)"
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise EdgepruneError(
            f"cannot read image {name} ({w}×{h}: longer than {MAX_ASPECT:g}:1 on one side)"
        )


def decode(path: Path) -> Image.Image:
    """The RGB pixels of the image file ``path``, its declared size checked
    (``check_size``) before they are decoded; EdgepruneError naming the file when it is
    not an image this reads, or is too large, truncated or corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_formats()) as im:
                check_size(im.size, path)
                return im.convert("RGB")
    except DECODE_ERRORS as e:
        msg = " ".join(str(e).split())[:160]
        raise EdgepruneError(f"cannot read image {path} ({msg})") from None


def _formats() -> tuple[str, ...]:
    Image.init()  # every plugin registered (once)
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def read_image(path: Path, pre: Preprocess) -> torch.Tensor:
    """One image through ``pre``; raises EdgepruneError when it cannot be decoded."""
    return pre(decode(path))


@dataclass
class Batch:
    images: torch.Tensor  # B×3×H×W
    labels: torch.Tensor | None  # B (int64) or None
    indices: list[int]  # positions in the ImageSet


def batches(
    images: ImageSet,
    pre: Preprocess,
    batch: int,
    skipped: list[Path] | None = None,
    strict: bool = False,
) -> Iterator[Batch]:
    """Decoded, preprocessed batches of ``images``. Unreadable files are appended to
    ``skipped`` and left out (``strict``: an error instead)."""
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} must be at least 1")
    buf: list[torch.Tensor] = []
    idx: list[int] = []

    def flush() -> Batch:
        labels = (
            torch.tensor([images.labels[i] for i in idx], dtype=torch.int64)
            if images.labels is not None
            else None
        )
        return Batch(torch.stack(buf), labels, list(idx))

    for i, f in enumerate(images.files):
        try:
            t = read_image(f, pre)
        except EdgepruneError:
            if strict:
                raise
            if skipped is not None:
                skipped.append(f)
            continue
        buf.append(t)
        idx.append(i)
        if len(buf) == batch:
            yield flush()
            buf, idx = [], []
    if buf:
        yield flush()


def load_images(folder: str | Path, img_size: int, pre: Preprocess | None = None) -> torch.Tensor:
    """Every image of a folder as one tensor N×3×img_size×img_size (DeiT preprocessing);
    an unreadable image is an error (``calibrate --images``)."""
    pre = pre or preprocess_for(img_size)
    imgs = scan(folder)
    return torch.cat([b.images for b in batches(imgs, pre, 64, strict=True)])


# ---- a demo folder (no dataset can be downloaded here) -----------------------------------
DEMO_MAX_SIZE = 2048  # pixels a side (the CLI's --size range says the same)
DEMO_MAX_IMAGES = 100_000  # classes × per-class


def write_demo_images(
    folder: str | Path,
    classes: int = 4,
    per_class: int = 8,
    size: int = 256,
    seed: int = 0,
) -> ImageSet:
    """Write an ImageNet-style folder of synthetic images: ``classes`` sub-folders
    ``class_000``…, ``per_class`` PNGs each. Each class is a pattern (stripes at its own
    angle and frequency, its own hue) with random phase, offset and noise per image, so
    the classes can be told apart and no two images are equal. For smoke tests and the
    README's examples; not a benchmark. The folder appears whole or not at all: it is
    written under a temporary name beside it and renamed into place at the end."""

    root = Path(folder)
    _check_demo(root, classes, per_class, size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    with atomic_dir(root) as tmp:
        for c in range(classes):
            d = tmp / f"class_{c:03d}"
            d.mkdir()
            angle = math.pi * c / classes
            freq = 3.0 + 2.0 * (c % 3)
            hue = np.array([math.cos(2 * math.pi * (c / classes + k / 3)) for k in range(3)])
            for i in range(per_class):
                phase = rng.uniform(0, 2 * math.pi)
                wave = np.sin(
                    2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase
                )
                img = 0.5 + 0.35 * wave[..., None] * hue[None, None, :]
                img = img + rng.normal(0, 0.05, img.shape) + rng.uniform(-0.1, 0.1)
                _save_png((np.clip(img, 0, 1) * 255).astype(np.uint8), d / f"img_{i:03d}.png")
    return scan(root)


def write_demo_dataset(
    folder: str | Path,
    classes: int = 4,
    per_class: int = 8,
    val_per_class: int = 2,
    size: int = 256,
    seed: int = 0,
) -> tuple[ImageSet, ImageSet]:
    """``folder/train`` and ``folder/val`` of synthetic images (ImageNet layout, the
    same classes, other images in each), for training (``finetune --data``); written
    under a temporary name and renamed into place, like ``write_demo_images``."""
    root = Path(folder)
    _check_demo(root, classes, per_class + val_per_class, size)
    if val_per_class < 1:
        raise EdgepruneError("demo images need val-per-class ≥ 1")
    with atomic_dir(root) as tmp:
        write_demo_images(tmp / "train", classes, per_class, size, seed)
        write_demo_images(tmp / "val", classes, val_per_class, size, seed + 1)
    return scan(root / "train"), scan(root / "val")


def _check_demo(root: Path, classes: int, per_class: int, size: int) -> None:
    """The demo folder's counts within bounds, and ``root`` new (or an empty folder)."""
    if classes < 1 or per_class < 1 or not 8 <= size <= DEMO_MAX_SIZE:
        raise EdgepruneError(
            f"demo images need classes ≥ 1, per-class ≥ 1 and 8 ≤ size ≤ {DEMO_MAX_SIZE}"
        )
    if classes * per_class > DEMO_MAX_IMAGES:
        raise EdgepruneError(
            f"{classes} × {per_class} demo images are more than {DEMO_MAX_IMAGES:,}",
            "ask for fewer classes or fewer per class",
        )
    if root.exists() and not root.is_dir():
        raise EdgepruneError(f"{root} exists and is not a folder", "give a new folder")
    if root.exists() and any(root.iterdir()):
        raise EdgepruneError(f"{root} exists and is not empty", "give a new folder")
    check_outputs({"the folder": Output(root, folder=True)}, force=root.exists())


def _save_png(data: np.ndarray, path: Path) -> None:
    Image.fromarray(data, "RGB").save(path, format="PNG")
