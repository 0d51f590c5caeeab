"""Models: the DeiT backbone (timm parameter names) and the static pruned graphs."""
