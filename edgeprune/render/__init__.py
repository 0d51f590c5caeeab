"""How results are shown: rich tables for the terminal (``tables``) and PNG plots (``plots``).
Builds views from results it is given; imports the core only, never a job."""
