"""Device descriptors and measured latency tables (package data)."""
