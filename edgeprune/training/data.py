"""The training images: ``train/`` and ``val/`` in ImageNet layout (one folder per
class), read with torchvision's ``ImageFolder``, transformed with timm's DeiT recipe,
sharded over the processes.

Augmentation is seeded per sample (by the run's seed, the epoch and the image's index),
so an image gets the same crop, flip and RandAugment whichever process reads it: one
process and N processes at the same global batch see the same pixels. (Mixup/CutMix mix
within each process's batch, as timm's and DeiT's training do under DDP: with them on,
N processes are not the same run as one.)
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import ImageFolder

from edgeprune.core.distributed import World
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, check_size, decode


@dataclass(kw_only=True)
class Recipe:
    """The data side of the recipe (timm's names): RandAugment policy (None: off),
    random-erasing probability, crop fraction at evaluation, and whether the training
    images are augmented at all."""

    img_size: int = 224
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    crop_pct: float = 0.875
    augment: bool = True


def transforms(recipe: Recipe):
    """(train, eval) transforms from timm: DeiT's training recipe (random resized crop,
    flip, RandAugment, random erasing) and its evaluation (resize, centre crop)."""
    common = {"input_size": recipe.img_size, "interpolation": "bicubic",
              "mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # fmt: skip
    ev = create_transform(is_training=False, crop_pct=recipe.crop_pct, **common)
    if not recipe.augment:
        return ev, ev
    tr = create_transform(
        is_training=True, auto_augment=recipe.auto_augment, re_prob=recipe.reprob,
        re_mode="pixel", re_count=1, **common,
    )  # fmt: skip
    return tr, ev


class Images(Dataset):
    """An ``ImageFolder`` whose items are (image, label, index), each transformed under
    random generators seeded by (seed, epoch, index); ``epoch`` is set by the loop."""

    def __init__(self, folder: ImageFolder, seed: int):
        self.folder = folder
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        path, label = self.folder.samples[i]
        s = zlib.crc32(f"{self.seed}/{self.epoch}/{i}".encode())
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s)
            try:
                img = self.folder.transform(self.folder.loader(path))
            finally:
                random.setstate(py)
                np.random.set_state(npy)
        return img, label, i


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_folder(root: Path, what: str, transform) -> ImageFolder:
    """``root`` read as an ImageFolder; refused in one line when it is missing, holds no
    images, or holds one class."""
    if not root.is_dir():
        raise EdgepruneError(
            f"{what} folder {root} does not exist",
            "expected train/ and val/ with one folder per class",
        )
    try:
        folder = ImageFolder(str(root), transform=transform, loader=decode, is_valid_file=_is_image)
    except (FileNotFoundError, OSError) as e:
        msg = " ".join(str(e).split())[:160]
        raise EdgepruneError(
            f"{what} folder {root} holds no PNG/JPEG images in class folders ({msg})"
        ) from None
    if len(folder.classes) < 2:
        raise EdgepruneError(
            f"{what} folder {root} holds one class ({folder.classes[0]})",
            "a classifier trains on two classes or more",
        )
    return folder


def limit(folder: ImageFolder, n: int | None) -> ImageFolder:
    """At most ``n`` images of ``folder``, taken across the classes in turn (as
    ``evaluate --limit``): a quick run that still sees every class it can."""
    if n is None or n >= len(folder.samples):
        return folder
    by_class: dict[int, list] = {}
    for sample in folder.samples:
        by_class.setdefault(sample[1], []).append(sample)
    picked, k = [], 0
    while len(picked) < n:
        picked += [v[k] for v in by_class.values() if k < len(v)][: n - len(picked)]
        k += 1
    folder.samples = folder.imgs = picked
    folder.targets = [t for _, t in picked]
    return folder


def check_readable(folder: ImageFolder, world: World) -> None:
    """Open every image's header (this process's share) and check its size, before
    the first step: an unreadable file is refused in one line, on every process."""
    bad = None
    for path, _ in folder.samples[world.rank :: world.size]:
        try:
            with Image.open(path) as im:
                check_size(im.size, path)
        except EdgepruneError as e:
            bad = e.message
        except Exception as e:  # noqa: BLE001 - any reason PIL gives: the file is unreadable
            bad = f"cannot read image {path} ({' '.join(str(e).split())[:120]})"
        if bad:
            break
    if world.any(bad is not None):
        raise EdgepruneError(bad or "an image another process checked cannot be read")


class Shard(Sampler):
    """Every ``size``-th index from ``rank`` (no padding: evaluation counts each image
    once, however many processes share it)."""

    def __init__(self, n: int, world: World):
        self.indices = list(range(world.rank, n, world.size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Data:
    train: Images
    val: ImageFolder
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: DistributedSampler
    classes: list[str]

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.train.epoch = epoch


def load_data(
    root: Path,
    recipe: Recipe,
    *,
    batch: int,
    world: World,
    seed: int,
    workers: int = 0,
    max_images: int | None = None,
) -> Data:
    """``root/train`` and ``root/val`` (ImageNet layout), checked and sharded: ``batch``
    is the global batch, each process loading ``batch / processes``."""
    if batch % world.size:
        raise EdgepruneError(f"--batch {batch} is not divisible by the {world.size} processes")
    tr_t, ev_t = transforms(recipe)
    train = limit(image_folder(Path(root) / "train", "training", tr_t), max_images)
    val = limit(image_folder(Path(root) / "val", "validation", ev_t), max_images)
    if val.classes != train.classes:
        raise EdgepruneError(
            f"val/ has classes {val.classes[:5]}… unlike train/'s {train.classes[:5]}…"
        )
    if len(train) < batch:
        raise EdgepruneError(f"train/ holds {len(train)} images, fewer than one batch of {batch}")
    check_readable(train, world)
    check_readable(val, world)
    images = Images(train, seed)
    sampler = DistributedSampler(
        images, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed, drop_last=True
    )
    per = batch // world.size
    train_loader = DataLoader(
        images, batch_size=per, sampler=sampler, drop_last=True, num_workers=workers
    )
    val_loader = DataLoader(
        val, batch_size=per, sampler=Shard(len(val), world), num_workers=workers
    )
    return Data(images, val, train_loader, val_loader, sampler, train.classes)
