"""Training: the methods' training forms, the latency-aware sparsity loss, and ``finetune``
(a pruned model trained to a device budget)."""
