"""Entry-point code of the pipeline: prep, train, evaluate, export_onnx, main (see MLproject)."""
