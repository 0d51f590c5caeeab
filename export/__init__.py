"""Exporters: one module per target (onnx, tensorrt, coreml) and the artifact manifest."""
