"""Runtime runners: one module per runtime, one interface (load, run, time)."""
