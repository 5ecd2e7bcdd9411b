"""Hidden-state KD: the student's chosen encoder layers pulled toward the teacher's chosen layers, per
student frame, by L2 (mean squared difference over the teacher's width) or cosine (1 - cosine
similarity), summed over frames and utterances and divided by the batch size. Where the widths differ
a learned linear projection maps the student's layer to the teacher's width: it trains with the
student and is not part of the saved student. Computed from the teacher on each batch (no dump);
every utterance. kd_conf::

    hidden_weight: 1.0
    hidden_layers: {2: 4}     # student layer: teacher layer (encoder blocks, 1-based); null: the encoder outputs
    hidden_loss: l2           # or cosine
"""
import torch

from kdtool.errors import ConfigError
from kdtool.kd.terms.base import Term
from kdtool.models.asr import front_end

LOSSES = ("l2", "cosine")


class HiddenTerm(Term):
    name, label = "hidden", "hidden-state"
    reads = None  # online only
    needs = "encoder"
    defaults = {"hidden_layers": None, "hidden_loss": "l2"}

    def check_conf(self, conf, source):
        if conf["hidden_loss"] not in LOSSES:
            raise ConfigError(f"{source}: kd_conf: hidden_loss must be one of {LOSSES}, not {conf['hidden_loss']!r}")
        layers = conf["hidden_layers"]
        if layers is not None and (not isinstance(layers, dict) or not layers or not all(
                isinstance(k, int) and isinstance(v, int) for k, v in layers.items())):
            raise ConfigError(f"{source}: kd_conf: hidden_layers must map student layers to teacher layers "
                              f"(integers, e.g. {{2: 4}}), or be null for the encoder outputs; not {layers!r}")

    def student_layers(self, kd):
        return sorted(kd["hidden_layers"]) if kd["hidden_layers"] else []

    def check_student(self, student, kd=None):
        super().check_student(student, kd)
        if kd is not None and kd["hidden_layers"]:
            _check_layers(student, list(kd["hidden_layers"]), "student")

    def trainable(self, student, teacher, kd):
        """One projection per layer pair (Identity where the widths agree), checked against both models."""
        if tuple(front_end(student)) != tuple(front_end(teacher.model)):
            raise ConfigError(f"kd_conf.hidden_weight > 0: hidden-state KD compares frame by frame, but the teacher "
                              f"({teacher.exp_dir}) subsamples as {front_end(teacher.model)} and the student as "
                              f"{front_end(student)}; give the student the teacher's input_layer")
        pairs = _pairs(kd)
        if kd["hidden_layers"]:
            _check_layers(student, [s for s, _ in pairs], "student")
            _check_layers(teacher.model, [t for _, t in pairs], f"teacher ({teacher.exp_dir})")
        s_width, t_width = student.encoder.output_size(), teacher.model.encoder.output_size()
        make = (lambda: torch.nn.Linear(s_width, t_width)) if s_width != t_width else torch.nn.Identity
        return torch.nn.ModuleList([make() for _ in pairs])

    def loss(self, ctx, model, enc, enc_lens, batch):
        pairs = _pairs(ctx.kd)
        teacher = ctx.online_teacher
        s_layers, t_layers = [s for s, _ in pairs], [t for _, t in pairs]
        s_hidden = [ctx.hidden[n] for n in s_layers] if ctx.kd["hidden_layers"] else [enc]
        with torch.no_grad():
            feats = teacher.features(batch, enc.device)
            t_enc, _, t_hidden = teacher.model.encoder_layers(feats, batch["feats_lens"],
                                                              t_layers if ctx.kd["hidden_layers"] else [])
            t_hidden = t_hidden if ctx.kd["hidden_layers"] else [t_enc]
        projections = ctx.parts[self.name]
        frames = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        total = enc.new_zeros(())
        for proj, s, t in zip(projections, s_hidden, t_hidden):
            n = min(s.shape[1], t.shape[1])
            s, t, mask = proj(s[:, :n].float()), t[:, :n].float(), frames[:, :n]
            if ctx.kd["hidden_loss"] == "l2":
                per_frame = (s - t).pow(2).mean(-1)
            else:
                per_frame = 1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)
            total = total + per_frame.masked_fill(~mask, 0).sum()
        return total / len(batch["utts"])


def _pairs(kd):
    """[(student layer, teacher layer)]; [(0, 0)] stands for the encoder outputs."""
    return sorted(kd["hidden_layers"].items()) if kd["hidden_layers"] else [(0, 0)]


def _check_layers(model, layers, who):
    n = len(model.encoder_blocks())
    bad = [x for x in layers if not 1 <= x <= n]
    if bad:
        raise ConfigError(f"kd_conf.hidden_layers: the {who}'s encoder has layers 1..{n}, not {bad}")
