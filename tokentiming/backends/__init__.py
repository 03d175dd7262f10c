"""Speed backends: KV caches (eager, static with CUDA graphs), the lean compiled CPU draft, CPU linear kernels."""
