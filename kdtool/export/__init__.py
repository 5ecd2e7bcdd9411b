"""ONNX export of trained models (fp32 and int8) for onnxruntime and sherpa-onnx: exporter.py writes
an export dir, runtime.py loads one and refuses graphs that do not belong to it."""
