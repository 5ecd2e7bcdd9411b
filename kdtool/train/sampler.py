"""Length-bucketed batches under a frame budget, reshuffled each epoch, split across DDP ranks."""
import logging
import math

import torch


class BucketBatchSampler(torch.utils.data.Sampler):
    """Yields lists of utterance ids.

    Utterances sorted by length are cut into batches whose padded size (longest utterance x batch
    size) stays within ``batch_frames``, so similar lengths share a batch and little is padding; an
    utterance longer than the budget forms a batch of its own. Batch contents are fixed; their order
    is shuffled per epoch from (seed, epoch), as DistributedSampler does, so every rank agrees.

    With ``num_replicas`` R, rank r takes batches r, r+R, ...; every rank must get the same count or
    DDP hangs, so the list is padded with repeated batches (or, with ``drop_last``, cut to a
    multiple of R). With one replica, each utterance comes exactly once per epoch.
    """

    def __init__(self, num_frames, batch_frames, shuffle=True, seed=0, num_replicas=1, rank=0,
                 drop_last=False, max_batch_size=None):
        if not num_frames:
            raise ValueError("no utterances to make batches of")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.shuffle, self.seed, self.epoch, self._skip = shuffle, seed, 0, 0
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.batches = self._make_batches({u: int(n) for u, n in num_frames.items()}, batch_frames, max_batch_size)
        if drop_last and len(self.batches) < num_replicas:
            raise ValueError(f"{len(self.batches)} batches cannot be shared by {num_replicas} ranks with drop_last")

    @staticmethod
    def _make_batches(num_frames, batch_frames, max_batch_size):
        order = sorted(num_frames, key=lambda u: (num_frames[u], u))  # ties by id: deterministic
        batches, cur = [], []
        for utt in order:
            # Ascending order: the new utterance is the batch's longest.
            if cur and (num_frames[utt] * (len(cur) + 1) > batch_frames or len(cur) == max_batch_size):
                batches.append(cur)
                cur = []
            cur.append(utt)
        batches.append(cur)
        too_long = [u for u in order if num_frames[u] > batch_frames]
        if too_long:
            logging.warning("%d utterances are longer than batch_frames=%d (longest: %s, %d frames); "
                            "each forms a batch of its own", len(too_long), batch_frames, too_long[-1],
                            num_frames[too_long[-1]])
        return batches

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _order(self):
        n, r = len(self.batches), self.num_replicas
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            return order[:n - n % r]
        pad = (-n) % r  # fewer than r, so (order * r) has enough to repeat even when n < r
        return order + (order * r)[:pad]

    def skip_next(self, n):
        """The next epoch's iteration starts after its first ``n`` batches (a run resumed mid-epoch)."""
        self._skip = n

    def __iter__(self):
        skip, self._skip = self._skip, 0
        for i in self._order()[self.rank::self.num_replicas][skip:]:
            yield list(self.batches[i])  # a copy: callers may reorder it

    def __len__(self):
        n, r = len(self.batches), self.num_replicas
        return n // r if self.drop_last else math.ceil(n / r)
