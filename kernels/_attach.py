"""How the public loss functions give the fused ops' gradient to autograd, torch.func and torch.compile."""

import torch


def with_gradient(value: torch.Tensor, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """`value` [...] (computed without autograd) made differentiable w.r.t. `x` [..., C], with
    d value / d x = `unit` per unit of upstream gradient, by adding sum((x - x.detach()) * unit).

    The added term is exactly zero, so the value is unchanged, and backward is one broadcast
    multiply, as the op's registered autograd formula. Why not that formula (or an
    autograd.Function) everywhere: a custom op's autograd does not compose with torch.func
    transforms, and torch.compile cannot vmap an autograd.Function (FIVE's inner loop is grad of
    vmap, compiled); these plain ops work in eager, under vmap and grad, compiled, and in a CUDA
    graph. Under plain eager autograd (`_dispatch.plain_autograd`) the public functions use the
    formula instead: the attachment's five extra ops each way are launches that count there.
    """
    return value + ((x - x.detach()).to(unit.dtype) * unit).sum(-1)
