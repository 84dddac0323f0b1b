"""Testing helpers: the pytest plugin ``projc.testing.pytest_plugin`` (registered as ``projc`` in
the ``pytest11`` entry point), which checks ONNX models against onnxruntime or stored goldens."""
