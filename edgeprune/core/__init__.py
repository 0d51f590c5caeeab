"""The core of a pruned ViT: architectures, checkpoints and sources, the TokenPlan, FLOPs,
the methods and models, image folders, errors and atomic files. Imports nothing else."""
