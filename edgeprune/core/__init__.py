"""The core of a pruned ViT: architectures, checkpoints and sources, the TokenPlan, FLOPs,
the methods and models, images, errors, atomic files, what backends share. Imports nothing else."""
