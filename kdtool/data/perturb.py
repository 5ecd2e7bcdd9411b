"""Speed perturbation of a data dir, as Kaldi's perturb_data_dir_speed.sh: a copy per factor whose
utterance and speaker ids get the prefix ``sp<factor>-`` and whose audio goes through ``sox speed``."""
from pathlib import Path

from kdtool.data.datadir import DataDir, DataDirError
from kdtool.data.validate import validate_data_dir


def perturbed_entry(entry, factor):
    """The wav.scp entry that plays ``entry`` at ``factor`` times the speed (sox resamples back)."""
    entry = entry.strip()
    if entry.endswith("|"):
        return f"{entry} sox -t wav - -t wav - speed {factor} |"
    return f"sox {entry} -t wav - speed {factor} |"


def speed_perturb(src, dst, factors=(0.9, 1.0, 1.1)):
    d = validate_data_dir(src, quiet=True)  # every utterance in every file, before any is copied
    if Path(dst).resolve() == d.path.resolve():
        raise DataDirError(f"{d.path}: the perturbed copy cannot replace its source; give another output dir")
    if not d.has("wav.scp"):
        raise DataDirError(f"{d.path / 'wav.scp'}: file not found (speed perturbation rewrites it)")
    if not d.transcribed:
        raise DataDirError(f"{d.path}: speed perturbation needs a transcribed data dir (no text file)")
    wav_scp, text, utt2spk = {}, {}, {}
    for f in factors:
        pre = f"sp{f}-"
        for utt in d.utts:
            wav_scp[pre + utt] = d.read("wav.scp")[utt] if f == 1.0 else perturbed_entry(d.read("wav.scp")[utt], f)
            text[pre + utt] = d.read("text")[utt]
            utt2spk[pre + utt] = pre + d.read("utt2spk")[utt]
    return DataDir.write(dst, wav_scp, utt2spk, text)
