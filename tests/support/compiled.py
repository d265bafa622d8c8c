"""The torch.compile check the optimizer tests share: a step compiled whole
(``fullgraph=True``: no graph break) steps as the eager one does."""

from __future__ import annotations

from typing import Callable

import torch


def assert_compiled_step_matches_eager(make_optimizer: Callable[[list], torch.optim.Optimizer]) -> None:
    """Three steps of a Linear(6, 3) with ``make_optimizer(params)`` under
    ``torch.compile(fullgraph=True)`` equal three eager steps of a copy."""
    torch._dynamo.reset()
    model, ref_model = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    ref_model.load_state_dict(model.state_dict())
    opt, ref = make_optimizer(list(model.parameters())), make_optimizer(list(ref_model.parameters()))

    @torch.compile(fullgraph=True)
    def compiled_step():
        opt.step()

    for i in range(3):
        for m in (model, ref_model):
            for p in m.parameters():
                p.grad = torch.full_like(p, 0.1 * (i + 1))
        compiled_step()
        ref.step()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b)
