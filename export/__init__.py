"""Export targets: one module per target (onnx, ort, tensorrt, coreml), each registering
a ``registry.Target``; ``targets`` lists them and dispatches; ``parity``, ``check`` and
``manifest`` serve every target."""
