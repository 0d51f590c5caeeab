"""The options of ``finetune`` (its own module: the training recipe has many), in the
Training panel; the shared ones (SRC, --budget, --json…) are in ``options``."""

from __future__ import annotations

from pathlib import Path

from edgeprune.cli.options import EXISTING, TRAINING, opt

CkptOutOpt = opt(Path, "--out", "-o", help="Checkpoint to write (.pth).")
FtTableOpt = opt(
    Path | None,
    "--table",
    "-p",
    panel=TRAINING,
    help="A latency table (with --target-ms).",
    **EXISTING,
)
DataOpt = opt(
    Path,
    "--data",
    "-d",
    panel=TRAINING,
    help="Images in ImageNet layout: DIR/train/CLASS/…, DIR/val/CLASS/….",
)
EpochsOpt = opt(int, "--epochs", panel=TRAINING, help="Epochs.")
StepBatchOpt = opt(
    int, "--batch", "-b", panel=TRAINING, help="Global batch (split over processes)."
)
StepsPerEpochOpt = opt(
    int | None, "--steps-per-epoch", panel=TRAINING, help="At most this many steps an epoch."
)
WeightDecayOpt = opt(float, "--weight-decay", panel=TRAINING, help="AdamW weight decay.")
WarmupOpt = opt(float, "--warmup-epochs", panel=TRAINING, help="Linear lr warm-up (epochs).")
MinLrOpt = opt(float, "--min-lr", panel=TRAINING, help="Cosine schedule's final lr.")
ClipOpt = opt(float | None, "--clip-grad", panel=TRAINING, help="Max gradient norm.")
MixupOpt = opt(float, "--mixup", panel=TRAINING, help="Mixup alpha (0: off; DeiT 0.8).")
CutmixOpt = opt(float, "--cutmix", panel=TRAINING, help="CutMix alpha (0: off; DeiT 1.0).")
SmoothingOpt = opt(float, "--smoothing", panel=TRAINING, help="Label smoothing.")
AaOpt = opt(str, "--aa", panel=TRAINING, help="RandAugment policy, or none.")
ReprobOpt = opt(float, "--reprob", panel=TRAINING, help="Random erasing probability.")
NoAugmentOpt = opt(bool, "--no-augment", panel=TRAINING, help="Train on the evaluation transform.")
EmaOpt = opt(float | None, "--ema", panel=TRAINING, help="EMA decay of the weights (e.g. 0.99996).")
AmpOpt = opt(str, "--amp", panel=TRAINING, help="none | bf16 | fp16 (fp16: CUDA).")
DistillWeightOpt = opt(float, "--distill-weight", panel=TRAINING, help="Distillation weight.")
WorkersOpt = opt(int, "--workers", panel=TRAINING, help="Data loader processes per rank.")
FtResumeOpt = opt(
    Path | None, "--resume", panel=TRAINING, help="Continue the run in this checkpoint."
)
LrOpt = opt(float, "--lr", panel=TRAINING, help="Selectors' learning rate (cosine).")
BackboneLrOpt = opt(
    float, "--backbone-lr-scale", panel=TRAINING, help="Backbone lr = lr × this (0: frozen)."
)
LatWeightOpt = opt(
    float, "--latency-weight", panel=TRAINING, help="Weight of the latency-aware loss (≥ 0)."
)
ShapeOpt = opt(str, "--shape", panel=TRAINING, help="Loss shape: squared | hinge | squared_hinge.")
TrainDeviceOpt = opt(str, "--device", panel=TRAINING, help="cpu, cuda, cuda:N or mps.")
TrainSeedOpt = opt(int, "--seed", panel=TRAINING, help="Training seed.")
