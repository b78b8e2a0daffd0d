"""``crd``: Tian, Krishnan & Isola, ICLR 2020, "Contrastive Representation Distillation" (arXiv:1910.10699);
reference code: github.com/HobbitLong/RepDistiller (``crd/``)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError
from fastkd.hashing import hash_ints
from fastkd.ranks import rank_world

from . import register_method
from .adapters import SeededSteps
from .base import Method
from .precision import full_precision, widen

#: ``eps`` of the reference ``ContrastLoss`` (added to the denominators of the NCE posterior).
NCE_EPS = 1e-7


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit generator seed that is a pure function of ``(seed, *keys)`` (splitmix64 chain)."""
    return hash_ints(seed, *keys) >> 1


_BANK_STREAM, _NEGATIVE_STREAM = 0x62616E6B, 0x6E6567  # "bank", "neg": separate streams of one seed


def init_memory(n_data: int, dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    r"""An ``n_data x dim`` bank drawn uniformly from :math:`[-s, s]`, :math:`s = 1/\sqrt{dim/3}`, as the reference
    ``ContrastMemory`` does (rows are not normalised; their expected squared norm is 1)."""
    stdv = 1.0 / math.sqrt(dim / 3.0)
    return torch.rand(n_data, dim, generator=generator).mul_(2.0 * stdv).sub_(stdv)


def sample_negatives(index: torch.Tensor, n_data: int, k: int, seed: int, step: int) -> torch.Tensor:
    """``len(index) x k`` negative dataset indices, uniform over ``{0..n_data-1} \\ {index[b]}`` for row ``b``,
    drawn with replacement. A pure function of ``(seed, step)`` and the positives: a fresh generator
    on ``index.device`` is seeded with :func:`stream_seed` each call, so a resumed run draws the same
    negatives at the same step (on the same device type: CPU and CUDA generators differ)."""
    if n_data < 2:
        raise ValueError(f"need at least 2 samples to draw negatives, got n_data={n_data}")
    positives = index.reshape(-1, 1).long()
    g = torch.Generator(device=positives.device)
    g.manual_seed(stream_seed(seed, _NEGATIVE_STREAM, 0, step))  # 0: one stream for all ranks
    r = torch.randint(0, n_data - 1, (positives.shape[0], k), generator=g, device=positives.device)
    return r + (r >= positives).long()  # skip the positive: a uniform draw over the n_data - 1 others


def dense_scoring(n_data: int, k: int, dim: int) -> bool:
    """Whether :func:`contrast_exp_scores` scores the batch against the whole bank (``B x n_data`` floats)
    rather than gathering ``B x (k+1) x dim`` bank rows: true when the first is the smaller tensor
    (CIFAR-100: 50000 < 16385 * 128), e.g. every dataset under 2.1 M images at the defaults."""
    return n_data <= (k + 1) * dim


def contrast_exp_scores(anchor: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, temperature: float,
                        dense: Optional[bool] = None) -> torch.Tensor:
    r""":math:`\exp(\langle m_{idx[b,j]}, a_b \rangle / \tau)`, ``B x (K+1)``: anchors ``a`` (``B x D``) against
    the bank rows ``idx`` (``B x (K+1)``, column 0 the positive). The bank carries no gradient. ``dense``:
    see :func:`dense_scoring` (``None``: chosen from the shapes); both give the same values."""
    memory = memory.detach()
    if dense is None:
        dense = dense_scoring(memory.shape[0], idx.shape[1] - 1, memory.shape[1])
    if dense:
        scores = (anchor @ memory.t()).gather(1, idx)
    else:
        rows = memory.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], memory.shape[1])
        scores = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
    return torch.exp(scores / temperature)


def nce_loss(p: torch.Tensor, n_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    r"""The NCE loss of one contrast direction (paper eqs. 10 and 18; reference ``ContrastLoss``).

    ``p`` (``B x (K+1)``): :math:`P(i \mid a) = \exp(\langle m_i, a\rangle/\tau) / Z`, column 0 the positive
    pair, columns 1..K the negatives drawn from the noise distribution :math:`P_n = 1/N` (uniform,
    ``N = n_data``). With :math:`h(i) = P / (P + K P_n)` the posterior that pair ``i`` came from the data,

    .. math::
        L = -\frac{1}{B} \sum_{b} \Big[ \log h(\mathrm{pos}_b)
            + \sum_{k=1}^{K} \log\big(1 - h(\mathrm{neg}_{b,k})\big) \Big],
        \quad \log h = \log \frac{P}{P + K/N + \epsilon},\; \log(1 - h) = \log \frac{K/N}{P + K/N + \epsilon}
    """
    k = p.shape[1] - 1
    noise = k / float(n_data)
    pos, neg = p[:, 0], p[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def momentum_rows(memory: torch.Tensor, index: torch.Tensor, v: torch.Tensor, momentum: float) -> torch.Tensor:
    r"""Updated bank rows for ``index``:
    :math:`m \leftarrow (\mu m + (1-\mu) v) / \lVert \mu m + (1-\mu) v \rVert_2`."""
    rows = memory.index_select(0, index) * momentum + v.to(memory.dtype) * (1.0 - momentum)
    return F.normalize(rows, dim=1)


class Embed(nn.Module):
    """Linear projection to ``dim_out`` followed by L2 normalisation (the reference ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def _batch_sizes(batch: torch.Tensor) -> List[int]:
    """The batch size of every rank, in rank order."""
    n = torch.tensor([batch.shape[0]], device=batch.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def _all_gather_rows(sizes: List[int], *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Concatenate each tensor's rows over all ranks (rank order); ``sizes``: every rank's row count."""
    world, top = len(sizes), max(sizes)
    out = []
    for t in tensors:
        padded = torch.cat([t, t.new_zeros((top - t.shape[0], *t.shape[1:]))]) if t.shape[0] < top else t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return tuple(out)


@register_method("crd")
class CRD(SeededSteps, Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * (L_s + L_t) on the ``embedding`` tap.

    Student and teacher embeddings go through their own :class:`Embed` head (linear to ``feat_dim`` +
    L2 norm; both heads train with the student, the teacher embedding is detached). Two memory banks,
    ``memory_s`` (student) and ``memory_t`` (teacher), hold one ``feat_dim`` row per training sample.
    L_s contrasts the student anchor with the teacher bank, L_t the teacher anchor with the student bank
    (:func:`nce_loss` each; positive = the sample's own row, ``nce_k`` negatives). Each normalising
    constant ``Z`` (``z_s``, ``z_t``) is set once, on the first batch, to ``mean(exp(scores / T)) * N``
    as in the reference, and kept. After the loss, the positives' rows of both banks move towards the
    batch embeddings with momentum 0.5 and are renormalised (:func:`momentum_rows`).

    Defaults (paper / reference CIFAR-100): ``feat_dim`` 128, ``nce_k`` 16384 (capped at N - 1),
    ``temperature`` 0.07, ``momentum`` 0.5, ``weight`` 0.8 (beta), CE weight 1.

    Negatives are drawn uniformly, with replacement, from the dataset indices other than the positive
    (:func:`sample_negatives`): the noise distribution :math:`P_n = 1/N` of the paper and of the reference
    memory's own (alias-method, uniform) sampler, minus its chance of drawing the positive itself. (The
    reference's CIFAR-100 loader instead passes, in its ``exact`` mode, K samples of *other classes*
    drawn without replacement.) Draws are a pure function of (``seed``, step) and the global batch's
    positives; ``seed`` defaults to
    the run's seed (``torch.initial_seed()`` at :meth:`setup`, which the trainer sets from ``--seed``).

    Needs ``dataset_size`` (the train split's length, set by the trainer before :meth:`setup`) and the
    batch's dataset ``index`` in :meth:`forward`. Banks and ``Z`` are buffers and the step counter and
    seed extra state, so ``state_dict`` holds all of it and a resumed run continues exactly. Under
    ``torch.distributed`` every rank computes what one process with the global batch (the ranks' batches
    concatenated in rank order) computes: the negatives are drawn for the global batch's positives
    (all-gathered) and each rank takes its rows, ``Z`` is estimated over the global batch, and the banks are
    updated with the embeddings of all ranks (all-gather), so they stay identical on every rank.
    """

    paper = "Tian et al. 2020"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset({"embedding"})
    ce_weight = 1.0

    def __init__(self, weight: float = 0.8, feat_dim: int = 128, nce_k: int = 16384, temperature: float = 0.07,
                 momentum: float = 0.5, seed: Optional[int] = None):
        super().__init__()
        if int(feat_dim) < 1 or int(nce_k) < 1:
            raise UserError(f"crd.feat_dim and crd.nce_k must be >= 1, got {feat_dim} and {nce_k}")
        if not float(temperature) > 0:
            raise UserError(f"crd.temperature must be > 0, got {temperature}")
        if not 0.0 <= float(momentum) < 1.0:
            raise UserError(f"crd.momentum must be in [0, 1), got {momentum}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UserError(f"crd.seed must be an integer, got {seed!r}")
        self.weight, self.feat_dim, self.nce_k = float(weight), int(feat_dim), int(nce_k)
        self.temperature, self.momentum, self.seed = float(temperature), float(momentum), seed
        #: number of training samples (rows of the memory banks); the trainer sets it before setup()
        self.dataset_size: Optional[int] = None
        self.embed_s: Optional[Embed] = None
        self.embed_t: Optional[Embed] = None
        self.k: Optional[int] = None  # negatives per positive in force: min(nce_k, N - 1)
        self._seed: Optional[int] = None
        self._step = 0
        self._dense = True
        self._index_checked = False
        self._z_synced = False

    # ---- construction ------------------------------------------------------------------------------
    def setup(self, student_signals, teacher_signals):
        n = getattr(self, "dataset_size", None)
        if n is None:
            raise UserError("crd: dataset_size is not set; set method.dataset_size = len(train split) before "
                            "setup() (its memory banks hold one row per training sample)")
        n = int(n)
        if n < 2:
            raise UserError(f"crd needs at least 2 training samples for its negatives, got dataset_size={n}")
        s, t = student_signals["embedding"], teacher_signals["embedding"]
        self.embed_s = Embed(s[0].numel(), self.feat_dim)
        self.embed_t = Embed(t[0].numel(), self.feat_dim)
        self._seed = int(self.seed if self.seed is not None else torch.initial_seed())
        g = torch.Generator().manual_seed(stream_seed(self._seed, _BANK_STREAM))
        self.register_buffer("memory_s", init_memory(n, self.feat_dim, g))
        self.register_buffer("memory_t", init_memory(n, self.feat_dim, g))
        self.register_buffer("z_s", torch.tensor(-1.0))  # < 0: not yet estimated
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.k = min(self.nce_k, n - 1)
        self._dense = dense_scoring(n, self.k, self.feat_dim)
        self._step, self._index_checked, self._z_synced = 0, False, False

    # ---- loss ----------------------------------------------------------------------------------------
    def forward(self, student, teacher, labels, index=None):
        if self.embed_s is None:
            raise RuntimeError("crd: setup() must run before the first forward (it builds the heads and banks)")
        if index is None:
            raise UserError("crd needs the dataset index of each sample (forward(..., index=batch.index)) "
                            "to find the positives in its memory banks and update them")
        n = self.memory_s.shape[0]
        s_emb, t_emb = student["embedding"], teacher["embedding"].detach()
        index = index.reshape(-1).to(device=self.memory_s.device, dtype=torch.long)
        if index.numel() != s_emb.shape[0]:
            raise UserError(f"crd: {index.numel()} dataset indices for a batch of {s_emb.shape[0]}")
        if not self._index_checked:  # once per process: a host sync
            if bool(((index < 0) | (index >= n)).any()):
                raise UserError(f"crd: dataset indices outside [0, {n}); dataset_size must be the number of "
                                f"samples in the training split")
            self._index_checked = True
        rank, world = rank_world()
        everyone, sizes, first = index, [index.numel()], 0  # the global batch's positives; this rank's rows
        if world > 1:
            sizes = _batch_sizes(index)
            (everyone,), first = _all_gather_rows(sizes, index), sum(sizes[:rank])
        with full_precision(self.memory_s.device):  # the heads and banks in float32 (float64 with float64 signals)
            f_s = self.embed_s(widen(s_emb))
            f_t = self.embed_t(widen(t_emb))
            negatives = sample_negatives(everyone, n, self.k, self._seed, self._step)[first : first + len(index)]
            idx = torch.cat([index.unsqueeze(1), negatives], dim=1)
            p_s = contrast_exp_scores(f_s, self.memory_t, idx, self.temperature, self._dense)
            p_t = contrast_exp_scores(f_t, self.memory_s, idx, self.temperature, self._dense)
            z_s, z_t = self._normaliser(self.z_s, p_s, world), self._normaliser(self.z_t, p_t, world)
            self._z_synced = True
            loss = nce_loss(p_s / z_s, n) + nce_loss(p_t / z_t, n)
            self._update_memory(f_s.detach(), f_t.detach(), everyone, sizes)
        self._step += 1
        return {"crd": self.weight * loss}

    def _normaliser(self, z: torch.Tensor, p: torch.Tensor, world: int) -> torch.Tensor:
        """``Z``, estimated as ``mean(p) * N`` over the global batch while unset (< 0), without a host sync."""
        estimate = p.detach().mean() * self.memory_s.shape[0]
        if world > 1 and not self._z_synced:  # every rank runs this on its first forward
            total = torch.stack([p.detach().sum(), torch.tensor(float(p.numel()), device=p.device)])
            dist.all_reduce(total)
            estimate = total[0] / total[1] * self.memory_s.shape[0]
        value = torch.where(z < 0, estimate.to(z.dtype), z)
        z.copy_(value)
        return value

    @torch.no_grad()
    def _update_memory(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor, sizes: List[int]) -> None:
        """``index``: the global batch's positives; ``sizes``: every rank's batch size."""
        if len(sizes) > 1:
            f_s, f_t = _all_gather_rows(sizes, f_s, f_t)
        for name, v in (("memory_s", f_s), ("memory_t", f_t)):
            memory = getattr(self, name)
            rows = momentum_rows(memory, index, v, self.momentum)
            if self._dense:  # the bank itself is saved for backward: replace it instead of writing into it
                setattr(self, name, memory.index_copy(0, index, rows))
            else:
                memory.index_copy_(0, index, rows)

    def options(self):
        return {"weight": self.weight, "feat_dim": self.feat_dim, "nce_k": self.nce_k,
                "temperature": self.temperature, "momentum": self.momentum,
                "seed": self._seed if self._seed is not None else self.seed}
