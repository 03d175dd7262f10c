"""Tools on top of the library: the benchmark harness, the GPU benchmark and the tiny test pair's builder.

Nothing in the runtime layers imports from here."""
