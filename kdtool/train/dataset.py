"""Utterances of one or more feature dirs (stage 2's ``dump/fbank/<set>``) as normalized
features + token ids, and padded batches in the layout ESPnet models take.

Features are read lazily from the ark files (only ``feats.scp`` and ``utt2num_frames`` are read up
front), so a corpus of any size costs memory only for its token ids.
"""
from pathlib import Path

import kaldiio
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from kdtool.data.datadir import DataDir, DataDirError
from kdtool.features.cmvn import load_cmvn, mean_std
from kdtool.features.reader import read_checked

IGNORE_ID = -1  # ESPnet's padding value for targets: ignored by its losses


class SpeechDataset(torch.utils.data.Dataset):
    """Items by utterance id (a batch sampler yields lists of ids)::

        {"utt": str, "feats": float32 [T, D], "ys": long [L] (empty if untranscribed), "transcribed": bool}

    ``feat_dirs``: one dir or a list (e.g. the training set plus an untranscribed pool).
    ``require_text``: a dir without ``text`` is an error; otherwise its utterances are untranscribed.
    """

    def __init__(self, feat_dirs, tokenizer, cmvn_path=None, require_text=True):
        if isinstance(feat_dirs, (str, Path)):
            feat_dirs = [feat_dirs]
        self.num_frames, self._reader, self._ys, self._dir = {}, {}, {}, {}
        for d in map(DataDir, feat_dirs):
            self._add_dir(d, tokenizer, require_text)  # tokenized now: errors show up before training
        self.utts = sorted(self._reader)
        self.cmvn = mean_std(load_cmvn(cmvn_path)) if cmvn_path is not None else None
        self._dim = (len(self.cmvn[0]), str(cmvn_path)) if self.cmvn is not None else (None, None)

    def _add_dir(self, d, tokenizer, require_text):
        if not d.has("feats.scp"):
            raise DataDirError(f"{d.path / 'feats.scp'}: file not found (run stage 2 for this set)")
        reader = kaldiio.load_scp(str(d.path / "feats.scp"))
        frames = d.read("utt2num_frames")
        if set(frames) != set(reader):
            odd = sorted(set(frames) ^ set(reader))
            raise DataDirError(f"{d.path / 'utt2num_frames'}: utterances differ from feats.scp (e.g. {odd[:3]})")
        if d.has("text"):
            text = d.read("text", allow_empty=True)  # an empty transcript gets the clearer error below
        elif require_text:
            raise DataDirError(f"{d.path}: no text file, and this set must be transcribed")
        else:
            text = None
        for utt in reader:
            if utt in self._dir:
                raise DataDirError(f"utterance {utt} is in two feature dirs: {self._dir[utt]} and {d.path}")
            self._dir[utt], self._reader[utt], self.num_frames[utt] = d.path, reader, int(frames[utt])
            if text is None:
                continue
            if utt not in text:
                raise DataDirError(f"{d.path / 'text'}: utterance {utt}: no transcript")
            ids = tokenizer.text2ids(text[utt])
            if not ids:
                raise DataDirError(f"{d.path / 'text'}: utterance {utt}: transcript has no tokens")
            self._ys[utt] = ids

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, utt):
        # checked (readable, dimension of the CMVN, frames of utt2num_frames, finite): a damaged ark
        # fails here with its file and utterance, not as a numpy error in the model
        feats = read_checked(lambda: self._reader[utt][utt], utt, self._dir[utt] / "feats.scp", self._dim[0],
                             self.num_frames[utt], dim_from=self._dim[1])
        feats = np.array(feats, dtype=np.float32)  # a copy: kaldiio's arrays are read-only
        if self.cmvn is not None:
            mean, std = self.cmvn
            feats = (feats - mean) / std
        ys = self._ys.get(utt)
        return {"utt": utt, "feats": torch.from_numpy(feats),
                "ys": torch.tensor(ys if ys is not None else [], dtype=torch.long), "transcribed": ys is not None}


def collate(batch):
    """Pad a list of items into one batch, longest first (some ESPnet code expects that order)."""
    batch = sorted(batch, key=lambda b: -b["feats"].shape[0])
    return {
        "utts": [b["utt"] for b in batch],
        "feats": pad_sequence([b["feats"] for b in batch], batch_first=True),
        "feats_lens": torch.tensor([b["feats"].shape[0] for b in batch], dtype=torch.long),
        "ys": pad_sequence([b["ys"] for b in batch], batch_first=True, padding_value=IGNORE_ID),
        "ys_lens": torch.tensor([len(b["ys"]) for b in batch], dtype=torch.long),
        "transcribed": torch.tensor([b["transcribed"] for b in batch], dtype=torch.bool),
    }


def build_dataloader(dataset, sampler, num_workers=0, loader_class=torch.utils.data.DataLoader):
    """A DataLoader over ``dataset`` whose batches (lists of utterance ids) come from ``sampler``;
    a dataset with its own ``collate`` (distillation's) pads its batches itself."""
    # Persistent workers: no re-fork each epoch; the sampler stays in this process, so set_epoch works.
    return loader_class(dataset, batch_sampler=sampler,
                                       collate_fn=getattr(dataset, "collate", collate),
                                       num_workers=num_workers, persistent_workers=num_workers > 0)
