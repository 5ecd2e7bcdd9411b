"""ONNX export of trained models (fp32 and int8) for onnxruntime and sherpa-onnx: exporter.py writes
an export dir from the graphs of onnx_ctc.py and onnx_transducer.py (common.py: what they share,
quantize.py: int8), runtime.py loads one and refuses graphs that do not belong to it."""
