"""The bucketing batch sampler of ``padding_aware_sampling`` (how batches are made: :mod:`jevons.plugins.padding_aware_sampling`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jevons.framework.errors import UsageError
from jevons.plugins.padding_aware_sampling import PaddingAwareSamplingConfig


class BucketingBatchSampler:
    """Budgeted batches from length buckets; the same list on every rank; resumable mid-epoch."""

    def __init__(
        self,
        lengths: Any,
        cfg: PaddingAwareSamplingConfig,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        bucket_caps: dict[int, int] | None = None,
    ) -> None:
        import numpy as np

        self.lengths = np.asarray(lengths, dtype=np.float64).reshape(len(lengths), -1)
        if cfg.dims == 2 and self.lengths.shape[1] < 2:
            raise UsageError(
                "padding_aware_sampling.dims=2 needs two lengths per sample (input and output); the dataset has one."
            )
        longest = self.lengths[:, 0].max()
        if longest + cfg.quadratic * longest**2 > cfg.max_tokens:
            raise UsageError(
                f"a sample of length {longest:g} costs more than padding_aware_sampling.max_tokens={cfg.max_tokens:g} "
                f"on its own (quadratic={cfg.quadratic:g}): raise the budget or filter long samples."
            )
        self.cfg = cfg
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.bucket_caps = bucket_caps or {}
        self.caps_probed = False
        """Whether the memory probe has set the caps (a resumed run then does not probe again)."""
        self.buckets = assign_buckets(self.lengths, cfg, world_size)
        self.epoch = 0
        self._start = 0
        self._cache: tuple[int, list[list[list[int]]]] | None = None

    def rounds(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's steps: each a round of ``world_size`` batches from one bucket, same on every rank."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        rounds: list[list[list[int]]] = []
        carried = np.empty(0, dtype=np.int64)
        buckets = np.unique(self.buckets)  # in order of length: a bucket's leftovers join the next one
        for position, bucket in enumerate(buckets):
            members = np.flatnonzero(self.buckets == bucket)
            if self.shuffle:
                members = rng.permutation(members)
            pool = np.concatenate([carried, members])
            batches = self._cut(pool, int(bucket))
            carried = np.empty(0, dtype=np.int64)
            last = position + 1 == len(buckets)
            if not last and len(batches) > 1 and self._fill(batches[-1]) < 0.5:
                carried = np.asarray(batches.pop(), dtype=np.int64)  # a half-empty batch: fill it from the next bucket
            try:
                batches = _split_to_multiple(batches, self.world_size)
            except ValueError:  # too few samples (or batches) to give every rank one
                if not last:
                    carried = pool  # all of it joins the next bucket
                    continue
                batches = self._merge_into_previous(rounds, [i for b in batches for i in b], int(bucket))
            rounds += [batches[i : i + self.world_size] for i in range(0, len(batches), self.world_size)]
        if self.shuffle:
            rounds = [rounds[i] for i in rng.permutation(len(rounds))]
        self._cache = (epoch, rounds)
        return rounds

    def _merge_into_previous(self, rounds: list[list[list[int]]], leftover: list[int], bucket: int) -> list[list[int]]:
        """The last bucket cannot feed every rank: re-cut it with the samples of the rounds before it."""
        import numpy as np

        samples = list(leftover)
        while rounds:
            samples = [i for batch in rounds.pop() for i in batch] + samples
            try:
                return _split_to_multiple(self._cut(np.asarray(samples, dtype=np.int64), bucket), self.world_size)
            except ValueError:
                continue
        raise ValueError(f"{len(samples)} samples cannot make batches for {self.world_size} ranks within the budget")

    def _fill(self, batch: list[int]) -> float:
        return float(self.lengths[batch, 0].sum()) / self.cfg.max_tokens

    def _cut(self, members: Any, bucket: int) -> list[list[int]]:
        """Greedy budgeted batches from one bucket, sorting pools of ``pool_batches`` batches' worth."""
        import numpy as np

        cfg = self.cfg
        cap = self.bucket_caps.get(bucket, cfg.max_batch_size)
        typical = max(1, int(cfg.max_tokens // max(1.0, float(np.median(self.lengths[members, 0])))))
        pool = max(1, typical * cfg.pool_batches)
        out: list[list[int]] = []
        for start in range(0, len(members), pool):
            chunk = members[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk, 0], kind="stable")]  # output is bounded by the sub-bucket
            batch: list[int] = []
            longest = longest_out = 0.0
            for index in chunk:
                length = self.lengths[index, 0]
                out_length = self.lengths[index, 1] if cfg.dims == 2 else 0.0
                new_longest, new_out = max(longest, length), max(longest_out, out_length)
                size = len(batch) + 1
                fits = size * new_longest + cfg.quadratic * size * new_longest**2 <= cfg.max_tokens
                fits = fits and (cfg.max_output_tokens is None or size * new_out <= cfg.max_output_tokens)
                fits = fits and (cap is None or size <= cap)
                if batch and not fits:
                    out.append(batch)
                    batch, new_longest, new_out = [], length, out_length
                batch.append(int(index))
                longest, longest_out = new_longest, new_out
            if batch:
                out.append(batch)
        return out

    def __len__(self) -> int:
        return len(self.rounds(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def resume(self, epoch: int, position: int) -> None:
        self.epoch, self._start = epoch, position

    def __iter__(self) -> Iterator[list[int]]:
        rounds = self.rounds(self.epoch)
        start, self._start = self._start, 0
        for step in range(start, len(rounds)):
            yield rounds[step][self.rank]

    def padding_of(self, batch: list[int]) -> tuple[float, float, float, float]:
        """Real and padded (``len(batch) * longest``) totals of the first length, then of the second (0 in 1-D)."""
        lengths = self.lengths[batch]
        first = (float(lengths[:, 0].sum()), float(len(batch) * lengths[:, 0].max()))
        if lengths.shape[1] < 2:
            return (*first, 0.0, 0.0)
        return (*first, float(lengths[:, 1].sum()), float(len(batch) * lengths[:, 1].max()))

    def set_bucket_caps(self, caps: dict[int, int]) -> None:
        """Per-bucket batch-size caps (the memory probe's); batches are cut anew from here on."""
        self.bucket_caps = {int(bucket): int(cap) for bucket, cap in caps.items()}
        self.caps_probed = True
        self._cache = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seed": self.seed, "epoch": self.epoch}
        if self.caps_probed:
            state["bucket_caps"] = [[b, n] for b, n in sorted(self.bucket_caps.items())]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        if "bucket_caps" in state:
            self.set_bucket_caps(dict(state["bucket_caps"]))


def _split_to_multiple(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Split the largest batches in two until their number is a multiple of ``world_size``."""
    batches = list(batches)
    while len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        if len(batches[largest]) < 2:
            raise ValueError(f"a bucket of {sum(map(len, batches))} samples cannot feed {world_size} ranks")
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


def assign_buckets(lengths: Any, cfg: PaddingAwareSamplingConfig, world_size: int = 1) -> Any:
    """A bucket number per sample: equal total cost along the first length; 2-D adds equal-count
    sub-buckets along the second within each."""
    import numpy as np

    first = lengths[:, 0]
    cost = first + cfg.quadratic * first**2
    order = np.argsort(first, kind="stable")
    cumulative = np.cumsum(cost[order])
    edges = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, cfg.num_buckets) / cfg.num_buckets)
    buckets = np.empty(len(first), dtype=np.int64)
    parts = [part for part in np.split(order, edges) if len(part)]
    while len(parts) > 1 and min(len(p) for p in parts) < world_size:  # too few to give every rank a batch
        small = min(range(len(parts)), key=lambda i: len(parts[i]))
        neighbour = small - 1 if small > 0 else small + 1
        parts[min(small, neighbour)] = np.concatenate([parts[min(small, neighbour)], parts[max(small, neighbour)]])
        del parts[max(small, neighbour)]
    for number, members in enumerate(parts):
        buckets[members] = number * cfg.output_buckets
    if cfg.dims == 2:
        for number in np.unique(buckets):
            members = np.flatnonzero(buckets == number)
            ranked = members[np.argsort(lengths[members, 1], kind="stable")]
            pieces = min(cfg.output_buckets, max(1, len(ranked) // max(1, world_size)))
            for sub, part in enumerate(np.array_split(ranked, pieces)):
                buckets[part] = number + sub
    return buckets
