"""TokenTiming Studio: speculative decoding across different tokenizers.

A small draft model drafts text, the target tokenizer re-encodes it, Dynamic Time Warping aligns the
two token sequences and the target verifies the re-encoded tokens in one forward pass.
"""

from .core.alignment import Alignment, align_text
from .core.decoder import TokenTimingDecoder, autoregressive, stream_autoregressive
from .core.trace import Generation, RoundTrace, run_stats
from .core.verification import VERIFIERS, Sampling

__all__ = ["Alignment", "Generation", "RoundTrace", "Sampling", "TokenTimingDecoder", "VERIFIERS",
           "align_text", "autoregressive", "run_stats", "stream_autoregressive"]
