"""The fast engine (vmap, compile, CUDA graphs, bf16). Built piece by piece; tested against
the reference in fastfree.free. So far: BatchNorm folding for frozen teachers."""
