"""Training: trainer (the two-pass Trainer) and parallel (data-parallel strategy for torchrun)."""
