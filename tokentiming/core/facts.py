"""Facts about a draft/target pair of tokenizers: sizes, families, shared token strings."""

from __future__ import annotations

from .surfaces import TokenSurfaces, surfaces_for


TOKENIZER_FAMILIES = {"byte_level": "byte-level BPE (Ġ)", "metaspace": "SentencePiece-style (▁)",
                      "decode": "other (surfaces by decoding)"}


def vocabulary_strings(surfaces: TokenSurfaces) -> set[str]:
    """Every ordinary token's string with space markers turned into spaces (special tokens left out)."""
    return {piece.decode("utf-8", errors="replace") for i, piece in enumerate(surfaces.vocabulary_bytes())
            if i not in surfaces.special_ids}


def pair_facts(draft_tokenizer, target_tokenizer) -> dict:
    """Vocabulary sizes, their exact-string overlap, tokenizer families, and whether they are one tokenizer."""
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    draft_strings, target_strings = vocabulary_strings(draft), vocabulary_strings(target)
    overlap = len(draft_strings & target_strings)
    same = draft_tokenizer.get_vocab() == target_tokenizer.get_vocab()
    return {
        "draft_vocab": len(draft_tokenizer),
        "target_vocab": len(target_tokenizer),
        "overlap": overlap,
        "overlap_of_draft": overlap / max(1, len(draft_strings)),
        "overlap_of_target": overlap / max(1, len(target_strings)),
        "draft_family": TOKENIZER_FAMILIES[draft.kind],
        "target_family": TOKENIZER_FAMILIES[target.kind],
        "same_tokenizer": same,
    }
