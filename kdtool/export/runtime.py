"""Load an export dir (kdtool.export.exporter) into onnxruntime sessions, refusing one whose graphs
do not belong together: each graph's metadata must name the export's kind, token list (sha256 and
size) and role, and tokens.txt must be the list the graphs were made for."""
import json
from dataclasses import dataclass, field
from pathlib import Path

from kdtool.export.common import ExportError, parse_tokens_txt, read_metadata, session, sherpa_tokens
from kdtool.tokens.tokenizer import BLANK
from kdtool.utils.files import file_sha256

# the graphs each kind's export holds: file -> role (metadata "graph")
GRAPHS = {"ctc": {"model.onnx": "ctc"}, "ar": {"model.onnx": "ctc"},
          "nar": {"model.onnx": "ctc", "mlm_decoder.onnx": "mlm_decoder"},
          "transducer": {"encoder.onnx": "encoder_chunk", "decoder.onnx": "predictor", "joiner.onnx": "joiner"}}
# a transducer exported in sherpa-onnx's layout (kdtool.export.onnx_sherpa; export_info.json's metadata "layout")
SHERPA_GRAPHS = {"encoder.onnx": "sherpa_encoder", "decoder.onnx": "stateless_predictor",
                 "joiner.onnx": "sherpa_joiner"}


@dataclass
class Export:
    export_dir: Path
    info: dict  # export_info.json
    tokens: list  # tokens.txt's symbols by id
    metadata: dict  # the graphs' shared metadata (str values)
    sessions: dict = field(default_factory=dict)  # role -> onnxruntime session
    files: dict = field(default_factory=dict)  # role -> the file it was loaded from

    @property
    def kind(self):
        return self.info["kdtool_kind"]

    @property
    def layout(self):
        """A transducer's graph layout: kdtool (LSTM predictor) or sherpa (stateless, sherpa-onnx's)."""
        return self.info.get("metadata", {}).get("layout", "kdtool")

    def meta_int(self, key):
        return int(self.metadata[key])

    @property
    def size_mb(self):
        """Bytes on disk of the graphs loaded, in MB (10^6)."""
        return sum(self.info["files"][f]["bytes"] for f in self.files.values()) / 1e6


def load_export(export_dir, int8=False, num_threads=1, model_dir=None):
    """The graphs of ``export_dir`` (``*.int8.onnx`` with ``int8``) in sessions on ``num_threads``
    threads. With ``model_dir``: the export must have been made from that dir's current weights and
    token list. An ExportError naming the dir and what is wrong otherwise."""
    d = Path(export_dir)
    if not (d / "export_info.json").is_file():
        raise ExportError(f"{d}: not a kdtool export dir: export_info.json is missing "
                          "(make one with python -m kdtool.bin.export)")
    info = json.loads((d / "export_info.json").read_text(encoding="utf-8"))
    kind = info.get("kdtool_kind")
    if kind not in GRAPHS:
        raise ExportError(f"{d / 'export_info.json'}: unknown kind {kind!r}")
    if model_dir is not None:
        _check_model_dir(d, info, Path(model_dir))
    if not (d / "tokens.txt").is_file():
        raise ExportError(f"{d}: tokens.txt is missing")
    tokens = parse_tokens_txt(d / "tokens.txt")
    exp = Export(d, info, tokens, {})
    graphs = SHERPA_GRAPHS if exp.layout == "sherpa" else GRAPHS[kind]
    for name, role in graphs.items():
        name = name.replace(".onnx", ".int8.onnx") if int8 else name
        if not (d / name).is_file():
            raise ExportError(f"{d}: {name} is missing" + (" (exported with --no_int8?)" if int8 else ""))
        sess = session(d / name, num_threads)
        meta = read_metadata(sess)
        _check_graph(d / name, sess, meta, role, info, tokens)
        exp.sessions[role], exp.files[role] = sess, name
        exp.metadata = meta
    return exp


def _check_model_dir(d, info, model_dir):
    for what, path in (("tokens_sha256", model_dir / "tokens" / "tokens.txt"),
                       ("model_sha256", model_dir / "model.pth")):
        if not path.is_file():
            raise ExportError(f"{model_dir}: not a trained model dir: {path.name} is missing")
        if file_sha256(path) != info.get(what):
            raise ExportError(f"{d}: exported from other {'weights' if what == 'model_sha256' else 'tokens'} than "
                              f"{path} has now; export {model_dir} again")
    own = sherpa_tokens((model_dir / "tokens" / "tokens.txt").read_text(encoding="utf-8").splitlines())
    if (d / "tokens.txt").is_file() and parse_tokens_txt(d / "tokens.txt") != own:
        raise ExportError(f"{d / 'tokens.txt'}: differs from {model_dir / 'tokens' / 'tokens.txt'}; "
                          f"export {model_dir} again")


def _check_graph(path, sess, meta, role, info, tokens):
    """A graph belongs to its export dir: same kind, role, token list and vocabulary as tokens.txt."""
    want = {"kdtool_kind": info["kdtool_kind"], "graph": role, "tokens_sha256": info["tokens_sha256"],
            "vocab_size": str(len(tokens))}
    wrong = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k} is {got!r}, expected {exp!r}" for k, (got, exp) in wrong.items())
        raise ExportError(f"{path}: does not match its export dir's tokens.txt / export_info.json ({detail})")
    outputs = {o.name: o.shape[-1] for o in sess.get_outputs()}
    width = outputs.get("log_probs", outputs.get("logits"))
    if width is not None and width != len(tokens):
        raise ExportError(f"{path}: outputs {width} tokens, but {path.parent / 'tokens.txt'} has {len(tokens)}")
    blank = int(meta["blank_id"])
    if tokens[blank] != BLANK:
        raise ExportError(f"{path}: blank id {blank} is {tokens[blank]!r} in {path.parent / 'tokens.txt'}, not {BLANK}")

