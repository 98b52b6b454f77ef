"""Lightning: project after every optimizer step with a callback.

``Trainer(callbacks=[ProjectionCallback()])`` keeps a LightningModule's constrained
tensors feasible: after every real optimizer step it calls
:func:`~torch_constraints.hard_project` on the module, with automatic or manual
optimization, gradient accumulation and several optimizers.

Importing this module imports ``pytorch_lightning`` (or, when only the unified
package is installed, ``lightning.pytorch``); the callback works with the
trainer of either package. Without either, the module still imports (so its
documentation builds) and constructing the callback raises ``ImportError``.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch.utils.hooks import RemovableHandle

from ..hooks import _unwrap, project_after_step
from ._logging import logged_values, require_bools

__all__ = ["ProjectionCallback"]


def _callback_base() -> tuple[Any, str | None]:
    for name in ("pytorch_lightning", "lightning.pytorch"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.Callback, name
    return object, None


# The Lightning package whose Callback ProjectionCallback subclasses, or None.
_Callback: Any
_framework: str | None
_Callback, _framework = _callback_base()


class ProjectionCallback(_Callback):  # type: ignore[misc]
    """A Lightning ``Callback`` that calls ``hard_project(pl_module)`` after every optimizer step.

    **Where it hooks in.** When training starts (``on_train_start``: the optimizers
    exist and a checkpoint given as ``ckpt_path`` is restored) the callback
    registers :func:`~torch_constraints.project_after_step` on each of
    ``trainer.optimizers``: a post-step hook of the ``torch.optim.Optimizer``
    itself, which runs once after each real update and only then. That covers
    every case with one mechanism:

    * gradient accumulation (``accumulate_grad_batches=k``): Lightning calls
      ``optimizer.step()`` every ``k`` batches, so the projection runs every ``k``
      batches, not after every batch;
    * several optimizers and manual optimization (``self.optimizers()`` returns
      ``LightningOptimizer`` wrappers of the same optimizers): each
      ``opt.step()`` is followed by a projection, before the next line of
      ``training_step`` reads the weights;
    * a step skipped by a ``GradScaler`` (inf or NaN gradients) changes no weight
      and is not followed by a projection.

    Lightning hooks are the wrong place: ``on_before_zero_grad`` runs *before*
    ``optimizer.step()`` in Lightning 2.x, and ``on_train_batch_end`` runs after
    every batch whether or not the optimizer stepped (and after all the steps of a
    manual ``training_step``, too late for the ones in between). The hooks are
    removed when training ends (``on_train_end``, ``teardown``, ``on_exception``).

    With ``log_saturation=True`` the callback also logs, in ``on_train_batch_end``
    of each batch that had a step, the share of entries at a bound of every
    box-constrained tensor (:func:`~torch_constraints.saturation`), as
    ``saturation/<tensor name>`` through ``pl_module.log_dict`` (one device
    synchronisation per logged batch). ``log_violation=True`` logs, the same way,
    how far each constrained raw tensor is from its set
    (:func:`~torch_constraints.violation`, ``violation/<tensor name>``).

    Args:
        log_saturation: log the saturation of every box-constrained tensor after
            each batch with an optimizer step. Default: ``False``.
        log_violation: log the violation of every constrained tensor likewise.
            Default: ``False``.

    Raises:
        ImportError: if neither ``pytorch_lightning`` nor ``lightning`` is installed.
        TypeError: if ``log_saturation`` or ``log_violation`` is not a bool.
        ValueError: when training starts, if the LightningModule has no tensor
            constrained by this library.

    Example::

        import pytorch_lightning as pl
        from torch_constraints import constrain_all
        from torch_constraints.integrations.lightning import ProjectionCallback

        model = MyLightningModule()
        constrain_all(model.net, -0.01, 0.01, parametrize=False)
        trainer = pl.Trainer(max_steps=100, callbacks=[ProjectionCallback()])
        trainer.fit(model, train_loader)
    """

    def __init__(self, *, log_saturation: bool = False, log_violation: bool = False) -> None:
        if _framework is None:
            raise ImportError(
                "ProjectionCallback needs Lightning: pip install 'torch-constraints[lightning]'"
            )
        require_bools(log_saturation=log_saturation, log_violation=log_violation)
        super().__init__()
        self.log_saturation = log_saturation
        self.log_violation = log_violation
        self._handles: list[RemovableHandle] = []
        self._stepped = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Register the projection on each of ``trainer.optimizers``."""
        self._remove_hooks()
        for optimizer in trainer.optimizers:
            self._handles.append(project_after_step(optimizer, pl_module))
            if self.log_saturation or self.log_violation:
                self._handles.append(_unwrap(optimizer).register_step_post_hook(self._mark))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log what ``log_saturation``/``log_violation`` ask for, when the batch had a step."""
        if self._stepped:
            self._stepped = False
            values = logged_values(
                pl_module, log_saturation=self.log_saturation, log_violation=self.log_violation
            )
            if values:
                pl_module.log_dict(values, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Remove the hooks."""
        self._remove_hooks()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Remove the hooks."""
        self._remove_hooks()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove the hooks."""
        self._remove_hooks()

    def _mark(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        self._stepped = True

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stepped = False
