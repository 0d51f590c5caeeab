"""Latency tables (what ``profile`` measures on a device) and the latency model that predicts a
TokenPlan's latency from one. Read by profiling, budgets and the training loss."""
