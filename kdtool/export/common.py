"""What every exported graph shares: the ONNX export call, metadata, the token list in sherpa-onnx's
format, and the patches that make espnet modules traceable."""
import contextlib
import json
import math
import types
import warnings

import onnx
import onnxruntime as ort
import torch

from kdtool.errors import KdtoolError
from kdtool.tokens.tokenizer import BLANK, SOS_EOS, SPACE

OPSET = 17  # what sherpa-onnx's own exports use; onnxruntime 1.31 runs it
SHERPA_SPACE = "\u2581"  # sherpa-onnx turns a token's leading U+2581 into a space (deploy-notes.md)
SHERPA_EOS = "</s>"  # one of the two symbols sherpa-onnx leaves out of its text (with SIL)


class ExportError(KdtoolError, ValueError):
    """An exp dir or export dir that cannot be exported or loaded; the message names the dir and what is wrong."""


def sherpa_tokens(tokens):
    """kdtool's token list -> the symbols of an exported tokens.txt: ``<space>`` (character units)
    becomes U+2581, which sherpa-onnx prints as a space, and ``<sos/eos>`` becomes ``</s>``, which it
    leaves out of the text as kdtool does (checked with sherpa-onnx 2.0.1); all else is kept (sherpa
    finds ``<blank>`` by name). ``<mask>``, never a CTC target, would be printed as it is."""
    rename = {SPACE: SHERPA_SPACE, SOS_EOS: SHERPA_EOS}
    return [rename.get(t, t) for t in tokens]


def tokens_txt(tokens):
    """tokens.txt as sherpa-onnx reads it: ``symbol id`` per line."""
    return "".join(f"{sym} {i}\n" for i, sym in enumerate(sherpa_tokens(tokens)))


def parse_tokens_txt(path):
    """The symbols of an exported tokens.txt, by id; an ExportError if ids are not 0..V-1 or the
    blank is missing."""
    symbols = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].isdigit() or not parts[0]:
            raise ExportError(f"{path}: line {n}: expected 'symbol id', got {line!r}")
        symbols[int(parts[1])] = parts[0]
    if sorted(symbols) != list(range(len(symbols))):
        raise ExportError(f"{path}: ids are not 0..{len(symbols) - 1}")
    if BLANK not in symbols.values():
        raise ExportError(f"{path}: no {BLANK} symbol (sherpa-onnx finds the CTC blank by that name)")
    return [symbols[i] for i in range(len(symbols))]


def _gather_rel_shift(self, x, left_context=0):
    """espnet2.asr_transducer's RelPositionMultiHeadedAttention.rel_shift without ``as_strided``
    (which ONNX has no op for): out[..., i, j] = x[..., i, T1 - 1 - i + j], the same elements."""
    t1 = x.size(2)
    idx = (t1 - 1) - torch.arange(t1, device=x.device)[:, None] + torch.arange(t1 + left_context, device=x.device)[None]
    return x.gather(-1, idx.expand(x.size(0), x.size(1), -1, -1))


def sinusoids(positions, dim):
    """espnet's sinusoidal encodings of ``positions`` (1-D float): row k is [sin(p_k w_0), cos(p_k w_0),
    sin(p_k w_1), ...] with w_i = 10000^(-2i / dim)."""
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    angle = positions[:, None] * div[None, :]
    return torch.stack([torch.sin(angle), torch.cos(angle)], -1).reshape(-1, dim)[None]


def _rel_pos_forward(self, x):
    """espnet's RelPositionalEncoding.forward (relative positions T-1 .. -(T-1)) computed in the graph:
    the stored table (2 x 5000 rows) would be the largest constant of a small model, and would limit
    the input to 5000 frames."""
    t = x.size(1)
    return x * self.xscale, sinusoids(torch.arange(t - 1, -t, -1, dtype=torch.float32), self.d_model)


def _stream_rel_pos_forward(self, x, left_context=0):
    """espnet2.asr_transducer's RelPositionalEncoding.forward (positions T + left_context - 1 .. -(T-1))."""
    t = x.size(1)
    return sinusoids(torch.arange(t + left_context - 1, -t, -1, dtype=torch.float32), self.size)


def _abs_pos_forward(self, x):
    """espnet's PositionalEncoding.forward (positions 0 .. T-1), computed in the graph."""
    return x * self.xscale + sinusoids(torch.arange(0, x.size(1), dtype=torch.float32), self.d_model)


@contextlib.contextmanager
def traceable(model):
    """Within the block, ``model``'s espnet modules compute what they compute with ONNX-friendly ops:
    positional encodings from positions (no 5000-row tables), the streaming attention's rel_shift
    with a gather (no ``as_strided``). The export's check against PyTorch outside the block proves
    them equal."""
    from espnet.nets.pytorch_backend.transformer import embedding
    from espnet2.asr_transducer.encoder.modules import attention, positional_encoding

    replace = {attention.RelPositionMultiHeadedAttention: ("rel_shift", _gather_rel_shift),
               positional_encoding.RelPositionalEncoding: ("forward", _stream_rel_pos_forward),
               embedding.RelPositionalEncoding: ("forward", _rel_pos_forward)}
    patched = []
    for m in model.modules():
        if type(m) in replace:
            name, fn = replace[type(m)]
        elif type(m) is embedding.PositionalEncoding and not m.reverse:
            name, fn = "forward", _abs_pos_forward
        else:
            continue
        setattr(m, name, types.MethodType(fn, m))
        patched.append((m, name))
    try:
        yield
    finally:
        for m, name in patched:
            delattr(m, name)


def export_graph(module, args, path, input_names, output_names, dynamic_axes, metadata):
    """Trace ``module`` on ``args`` into ONNX at ``path`` (legacy TorchScript exporter: it handles
    espnet's modules and the graphs sherpa-onnx loads, deploy-notes.md) with ``metadata`` (str
    values) in the model's metadata_props. The tracer's warnings about Python-side shape checks
    (sizes compared once, at trace time) are expected and silenced."""
    with warnings.catch_warnings(), torch.no_grad(), traceable(module):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # the LSTM's initial state is an input (h, c) of the prediction-network step, as it asks
        warnings.filterwarnings("ignore", message=".*batch_size other than 1, with a variable length with LSTM.*")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
    set_metadata(path, metadata)


def set_metadata(path, metadata):
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.save(graph, str(path))


def read_metadata(session):
    """An onnxruntime session's custom metadata (str values)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def read_file_metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def session(path, num_threads=1):
    """An onnxruntime session on ``num_threads`` threads (1: the RTF of one core, as kdtool decodes)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: the optimizer's notes about unused initializers are noise
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
