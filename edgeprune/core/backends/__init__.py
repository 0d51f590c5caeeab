"""What export/ and runtimes/ share: heavy optional imports, the runner interface and registry,
the ExecuTorch kernel library, the TensorRT engine builder. Imports only the core."""
