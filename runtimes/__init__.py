"""Runtime runners: one module (or folder) per runtime, one interface (load, run, time),
registered in ``edgeprune.core.backends.runner.RUNTIMES``; ``transports`` run them here,
over SSH or over adb. Imports only the core."""
