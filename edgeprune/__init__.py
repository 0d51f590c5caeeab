"""edgeprune: token-pruned Vision Transformers as static, deployable graphs."""

__version__ = "0.1.0"
