"""Runtime runners: one module (or folder) per runtime, one interface (load, run, time),
registered in ``base.RUNTIMES``; ``transports`` run them here, over SSH or over adb."""
