"""Hugging Face ``Trainer``: project after every optimizer step with a ``TrainerCallback``.

``Trainer(..., callbacks=[ProjectionCallback()])`` keeps the model's constrained
tensors feasible: after every optimizer step of the ``Trainer`` (every
``gradient_accumulation_steps`` batches) it calls
:func:`~torch_constraints.hard_project` on the model the ``Trainer`` passes to
its callbacks.

Importing this module imports ``transformers``. Without it, the module still
imports (so its documentation builds) and constructing the callback raises
``ImportError``.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from .._validation import type_name
from ..hooks import require_projectable
from ..projection import hard_project
from ._logging import logged_values, require_bools

__all__ = ["ProjectionCallback"]


def _callback_base() -> tuple[Any, bool]:
    try:
        module = importlib.import_module("transformers")
    except ImportError:
        return object, False
    base = module.TrainerCallback
    # on_optimizer_step came with transformers 4.42: an older Trainer never calls it.
    return base, hasattr(base, "on_optimizer_step")


_TrainerCallback: Any
_available: bool
_TrainerCallback, _available = _callback_base()


class ProjectionCallback(_TrainerCallback):  # type: ignore[misc]
    """A ``TrainerCallback`` that calls ``hard_project(model)`` after every optimizer step.

    The ``Trainer`` calls ``on_optimizer_step`` right after ``optimizer.step()``
    and before the learning-rate scheduler and ``zero_grad``, once per real step:
    with ``gradient_accumulation_steps=k``, once every ``k`` batches. The callback
    projects there, on the ``model`` the ``Trainer`` passes to every event (the
    unwrapped model, not a DDP wrapper). ``on_step_end`` would work too (it comes
    after the scheduler and ``zero_grad``); ``on_substep_end`` and
    ``on_step_begin`` would not. When the mixed-precision scaler skips a step, the
    projection runs anyway and changes nothing. ``on_train_begin`` checks that the
    model has constrained tensors.

    With ``log_saturation=True``, every time the ``Trainer`` logs (every
    ``logging_steps``), the callback adds the share of entries at a bound of every
    box-constrained tensor (:func:`~torch_constraints.saturation`) as
    ``saturation/<tensor name>`` to the logs and to the entry of
    ``state.log_history`` they were written to (so to ``trainer_state.json``).
    The ``Trainer`` runs its reporting callbacks (``report_to``: TensorBoard,
    W&B, ...) before the callbacks it is given, so those do not receive these
    values; the progress bar and the log history do. ``log_violation=True`` adds,
    the same way, how far each constrained raw tensor is from its set
    (:func:`~torch_constraints.violation`, ``violation/<tensor name>``).

    Args:
        log_saturation: add the saturation of every box-constrained tensor to the
            ``Trainer``'s logs. Default: ``False``.
        log_violation: add the violation of every constrained tensor likewise.
            Default: ``False``.

    Raises:
        ImportError: if ``transformers`` 4.42 or later (the first with
            ``on_optimizer_step``) is not installed.
        TypeError: if ``log_saturation`` or ``log_violation`` is not a bool; when
            training starts, if
            the ``Trainer``'s model is not an ``nn.Module``.
        ValueError: when training starts, if the model has no tensor constrained
            by this library.

    Example::

        from transformers import Trainer, TrainingArguments
        from torch_constraints import constrain_all
        from torch_constraints.integrations.transformers import ProjectionCallback

        constrain_all(model, -1.0, 1.0, include=(nn.Linear,), parametrize=False)
        trainer = Trainer(model=model, args=TrainingArguments("out"),
                          train_dataset=dataset, callbacks=[ProjectionCallback()])
        trainer.train()
    """

    def __init__(self, *, log_saturation: bool = False, log_violation: bool = False) -> None:
        if not _available:
            raise ImportError(
                "ProjectionCallback needs transformers 4.42 or later: "
                "pip install 'torch-constraints[transformers]'"
            )
        require_bools(log_saturation=log_saturation, log_violation=log_violation)
        super().__init__()
        self.log_saturation = log_saturation
        self.log_violation = log_violation

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check that the model has constrained tensors."""
        require_projectable(_model(kwargs), "ProjectionCallback")

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Project the model's constrained tensors."""
        hard_project(_model(kwargs))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Add what ``log_saturation``/``log_violation`` ask for to the logs."""
        if logs is None:
            return
        values = logged_values(
            _model(kwargs), log_saturation=self.log_saturation, log_violation=self.log_violation
        )
        if not values:
            return
        logs.update(values)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(values)  # Trainer.log stored a copy of logs just before


def _model(kwargs: dict[str, Any]) -> nn.Module:
    model = kwargs.get("model")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"ProjectionCallback: expected the Trainer to pass an nn.Module as model, "
            f"got {type_name(model)}"
        )
    return model
