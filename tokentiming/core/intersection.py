"""The vocabulary intersection of a draft/target pair: the tokens both models can write, byte for byte.

Token-level intersection (TLI; Timor et al., ICML 2025) lets the draft propose only tokens that are also
target tokens. Each drafted token is then exactly one target token, the draft's probability of proposing it
is known in the target's vocabulary, and plain speculative sampling verifies it losslessly
(:func:`tokentiming.core.verification.verify_tli`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import torch

from .surfaces import _BYTE_PIECE, TokenSurfaces


@dataclass(frozen=True)
class Intersection:
    """Draft and target ids that write the same bytes, paired one to one and sorted by draft id.

    ``draft_to_target`` and ``mask`` span the draft model's logits (``draft_width``), which can be wider than
    its tokenizer; ids past the tokenizer are outside. ``draft_strings`` and ``target_strings`` count each
    vocabulary's distinct ordinary byte strings, the denominators of the shares.
    """

    draft_ids: torch.Tensor  # (size,) int64
    target_ids: torch.Tensor  # (size,) int64: target_ids[i] writes the bytes of draft_ids[i]
    draft_to_target: torch.Tensor  # (draft_width,) int64, -1 where the draft id is outside
    mask: torch.Tensor  # (draft_width,) bool, True where the draft id is inside
    target_width: int
    draft_strings: int
    target_strings: int

    @property
    def size(self) -> int:
        return len(self.draft_ids)

    @property
    def share_of_draft(self) -> float:
        return self.size / max(1, self.draft_strings)

    @property
    def share_of_target(self) -> float:
        return self.size / max(1, self.target_strings)

    def to(self, device) -> Intersection:
        tensors = ("draft_ids", "target_ids", "draft_to_target", "mask")
        return dataclasses.replace(self, **{name: getattr(self, name).to(device) for name in tensors})

    def thinned(self, keep: float, seed: int = 0) -> Intersection:
        """A random ``keep`` share of this intersection (the rest left out): a pair with less overlap, all else
        equal, for measuring how acceptance depends on the overlap."""
        generator = torch.Generator().manual_seed(seed)
        kept = torch.randperm(self.size, generator=generator)[:round(keep * self.size)].sort().values.to(
            self.draft_ids.device)
        draft_ids, target_ids = self.draft_ids[kept], self.target_ids[kept]
        draft_to_target = torch.full_like(self.draft_to_target, -1)
        draft_to_target[draft_ids] = target_ids
        return dataclasses.replace(self, draft_ids=draft_ids, target_ids=target_ids, draft_to_target=draft_to_target,
                                   mask=draft_to_target >= 0)

    def in_target_space(self, draft_probs: torch.Tensor) -> torch.Tensor:
        """(..., draft_width) draft probabilities -> (..., target_width): each intersection token's mass on
        its target id, zero everywhere else."""
        out = draft_probs.new_zeros(*draft_probs.shape[:-1], self.target_width)
        out[..., self.target_ids] = draft_probs[..., self.draft_ids]
        return out


def _is_byte_fallback(surfaces: TokenSurfaces, piece: str | None) -> bool:
    """A SentencePiece ``<0xNN>`` piece: the tokenizer writes it only for bytes no ordinary piece covers."""
    return surfaces.kind != "byte_level" and piece is not None and bool(_BYTE_PIECE.match(piece))


def _id_by_bytes(surfaces: TokenSurfaces, width: int) -> dict[bytes, int]:
    """Each ordinary byte string of a vocabulary (ids below ``width``) and the one id chosen to write it.

    Special tokens and tokens that write nothing are left out. Where several ids write the same bytes, an
    ordinary piece is chosen over a byte-fallback piece (a model trained with byte fallback gives ``<0x0A>``
    almost no probability where ``\\n`` exists, so proposing it would be rejected), then the lowest id.
    """
    size = min(len(surfaces.tokenizer), width)
    pieces = surfaces.tokenizer.convert_ids_to_tokens(list(range(size)))
    ordinary, byte_fallback = [], []
    for token_id, (piece, data) in enumerate(zip(pieces, surfaces.vocabulary_bytes(size))):
        if data and token_id not in surfaces.special_ids:
            (byte_fallback if _is_byte_fallback(surfaces, piece) else ordinary).append((data, token_id))
    chosen: dict[bytes, int] = {}
    for data, token_id in ordinary + byte_fallback:  # ids ascend within each list
        chosen.setdefault(data, token_id)
    return chosen


@lru_cache(maxsize=8)
def intersection_for(draft: TokenSurfaces, target: TokenSurfaces, draft_width: int,
                     target_width: int) -> Intersection:
    """The (cached) intersection of a pair; the widths are the models' logits widths (or the tokenizers'
    lengths, for facts about the tokenizers alone)."""
    draft_by_bytes, target_by_bytes = _id_by_bytes(draft, draft_width), _id_by_bytes(target, target_width)
    pairs = sorted((draft_by_bytes[data], target_by_bytes[data]) for data in draft_by_bytes.keys() & target_by_bytes)
    draft_ids = torch.tensor([d for d, _ in pairs], dtype=torch.long)
    target_ids = torch.tensor([t for _, t in pairs], dtype=torch.long)
    draft_to_target = torch.full((draft_width,), -1, dtype=torch.long)
    draft_to_target[draft_ids] = target_ids
    return Intersection(draft_ids, target_ids, draft_to_target, draft_to_target >= 0, target_width,
                        len(draft_by_bytes), len(target_by_bytes))
