"""int8 graphs by onnxruntime's dynamic quantization: weights stored as int8, activations quantized
on the fly per batch, so no calibration set is needed."""
import collections
import logging

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

# MatMul (every linear layer: attention, feed-forward, CTC head, joint network; 2-D ones are Gemm,
# which onnxruntime quantizes with them) and LSTM. Not Conv: onnxruntime's ConvInteger is slower
# than float Conv on x86 (measured, 10 s utterance, one thread, 2-core AVX2 EPYC under load: a
# 4-block 64-dim Conformer CTC student's RTF 0.019 fp32, 0.018 int8 without Conv, 0.046 with it),
# and not Gather (embeddings are a lookup: int8 would save bytes, not time).
QUANTIZED_OPS = ("MatMul", "LSTM")


def op_counts(path):
    """{op type: count} of the graph at ``path``."""
    return dict(collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node))


def quantize(fp32_path, int8_path, op_types=QUANTIZED_OPS):
    """Write the int8 graph; returns {"quantized": {fp32 op: count}, "int8_ops": {op: count}}: which
    of the fp32 graph's ops became integer ones (MatMul -> MatMulInteger / DynamicQuantizeMatMul,
    Gemm -> MatMulInteger, LSTM -> DynamicQuantizeLSTM)."""
    before = op_counts(fp32_path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor at INFO, and advice at WARNING
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), op_types_to_quantize=list(op_types),
                         weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    after = op_counts(int8_path)
    integer = {op: n for op, n in after.items() if "Integer" in op or op.startswith("DynamicQuantize")}
    quantized = {op: n - after.get(op, 0) for op, n in before.items() if after.get(op, 0) < n}
    logging.info("%s: quantized %s -> %s", int8_path.name, quantized, integer)
    return {"quantized": quantized, "int8_ops": integer}
