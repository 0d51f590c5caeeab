"""Accuracy: ``evaluate`` a model or artifact on an image folder against references, and
``sensitivity`` (measured top-1 per pruning stage and keep ratio)."""
