"""Measuring devices: the profile sweep into a latency table, resume files, remote runs,
``bench`` of one artifact, and ``validate`` (the latency model against new measurements)."""
