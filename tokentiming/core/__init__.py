"""The method: token surfaces, re-encoding, DTW alignment, verification rules, the round loop and its trace.

No module here imports from ``backends`` except the decoder, and none imports ``models``, ``tools`` or ``views``."""
