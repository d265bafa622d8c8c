"""``SchemaOptimizer``: what ``Lars`` and ``Lamb`` (and so every compat class) share
as ``torch.optim`` optimizers that hold a fixed schema of group options: each
group is checked (merged with the defaults) before it is added, groups loaded
from an older state dict are completed with the class's own options only, and a
state dict of another flavour is refused naming the key."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from .validation import check_dtype, check_state_dict_schema

__all__ = ["SchemaOptimizer"]


class SchemaOptimizer(Optimizer):
    _OPTIONS: tuple[str, ...] = ()  # the options a param group of this class holds
    _BUFFER_KEY = ""                # the state key of its momentum (a foreign one is refused)
    _NAME = ""                      # its name in error messages

    def _check_options(self, group: dict[str, Any]) -> None:
        """Raises ValueError/TypeError naming the first invalid option of a group."""
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_options(merged)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if isinstance(p, Tensor):
                check_dtype(p.dtype, self._NAME)
        super().add_param_group({**param_group, "params": params})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Completes groups from an older version or from torch.optim.SGD's state dict with
        # the class's own options only: torch's __setstate__ adds keys (``differentiable``)
        # to self.defaults that we do not have, and copying those into the groups
        # would make state_dict() change under every load, deepcopy or pickle.
        super().__setstate__(state)
        for group in self.param_groups:
            for key in self._OPTIONS:
                if key in self.defaults:
                    group.setdefault(key, self.defaults[key])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict``, after refusing a state dict of another flavour
        whose options or state this class would misread (e.g. timm's ``trust_clip=True``
        is not Lars's numeric ``trust_clip``): a clear error naming the key, never a
        silent change of the math."""
        check_state_dict_schema(type(self).__name__, self._OPTIONS, self._BUFFER_KEY, state_dict)
        super().load_state_dict(state_dict)
