"""FREE, the paper-faithful reference: FIVE (Alg. 1), BELL (Alg. 2), cross-task replay (Eq. 4).

One file per part, plain sequential eager PyTorch, readable against the paper. The fast
engine will be tested against these functions.
"""
