"""Device profiles: one descriptor per device (``devices/*.toml``: runtime, precision,
threads, how it is reached), read by ``devices``."""
