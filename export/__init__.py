"""Export targets: one module per target (onnx, ort, tensorrt, coreml) or one folder
(executorch), each registering a ``registry.Target``; ``targets`` lists them and dispatches;
``parity`` (an artifact against PyTorch), ``check`` (a graph's static lint for a target) and
``manifest`` serve every target."""
