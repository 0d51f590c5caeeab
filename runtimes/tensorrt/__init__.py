"""The TensorRT runtime: ``runner`` times an engine (Python API or trtexec), ``engine``
builds one, ``trtexec`` reads trtexec's output."""
