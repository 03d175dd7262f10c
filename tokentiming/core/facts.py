"""Facts about a draft/target pair of tokenizers: sizes, families, the tokens they share byte for byte."""

from __future__ import annotations

from .intersection import intersection_for
from .surfaces import surfaces_for

TOKENIZER_FAMILIES = {"byte_level": "byte-level BPE (Ġ)", "metaspace": "SentencePiece-style (▁)",
                      "decode": "other (surfaces by decoding)"}


def pair_facts(draft_tokenizer, target_tokenizer) -> dict:
    """Vocabulary sizes, their intersection, tokenizer families, and whether they are one tokenizer.

    ``intersection`` counts the ordinary tokens (special tokens left out) that write the same bytes in both
    vocabularies, whatever their spelling ("Ġa" and "▁a" are one token); its shares are of each vocabulary's
    distinct byte strings. ``overlap``, ``overlap_of_draft`` and ``overlap_of_target`` are older names for
    the same numbers."""
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    shared = intersection_for(draft, target, len(draft_tokenizer), len(target_tokenizer))
    same = draft_tokenizer.get_vocab() == target_tokenizer.get_vocab()
    return {
        "draft_vocab": len(draft_tokenizer),
        "target_vocab": len(target_tokenizer),
        "intersection": shared.size,
        "intersection_of_draft": shared.share_of_draft,
        "intersection_of_target": shared.share_of_target,
        "overlap": shared.size,
        "overlap_of_draft": shared.share_of_draft,
        "overlap_of_target": shared.share_of_target,
        "draft_family": TOKENIZER_FAMILIES[draft.kind],
        "target_family": TOKENIZER_FAMILIES[target.kind],
        "same_tokenizer": same,
    }
