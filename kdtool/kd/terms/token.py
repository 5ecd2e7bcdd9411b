"""Token-level KD: T^2 KL(AR teacher's decoder posteriors || student decoder at T) per position: an AR
student's every position, a Mask-CTC student's masked ones; transcribed utterances."""
from kdtool.kd.losses import hinton_kd_loss
from kdtool.kd.terms.base import Term, fit, targets
from kdtool.models.asr import IGNORE_ID


class TokenTerm(Term):
    name, label = "token", "token"
    dump_types = ("token_posteriors",)
    transcribed_only = True
    needs = "decoder"
    needs_message = "token-level KD trains a decoder (an ar or nar student's); this {kind} student has none"
    batch_keys = ("token_ids", "token_probs", "has_token")

    def item(self, source, utt, item, dataset):
        ids, probs = source.tokens(utt, len(item["ys"]))
        return {"token_ids": ids, "token_probs": probs}

    def loss(self, ctx, model, enc, enc_lens, batch):
        if "token_ids" not in batch:
            return enc.new_zeros(())
        idx = (batch["has_token"] & batch["transcribed"]).nonzero().squeeze(1)
        if len(idx) == 0:
            return enc.new_zeros(())
        # the student's decoder on the transcript: an AR student predicts every position (and <eos>),
        # a Mask-CTC student the positions it masked; only those count (ys_out != IGNORE_ID)
        logits, ys_out = model.decoder_logits(enc[idx], enc_lens[idx], *targets(batch, idx))
        n = logits.shape[1]  # a Mask-CTC decoder has no <eos> position: the teacher's last row goes unused
        teacher = fit(batch["token_ids"][idx, :n], batch["token_probs"][idx, :n], n, batch, enc.device)
        kd = hinton_kd_loss(teacher, logits, ctx.temperature, ys_out != IGNORE_ID)
        return kd * len(idx) / len(batch["utts"])
