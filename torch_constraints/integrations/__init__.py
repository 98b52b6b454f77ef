"""Callbacks for training frameworks: Lightning and the Hugging Face ``Trainer``.

Each submodule imports its framework when it is imported itself; importing this
package loads none of them:

* :mod:`torch_constraints.integrations.lightning`: ``ProjectionCallback`` for
  ``pytorch_lightning`` (or ``lightning.pytorch``); ``pip install
  'torch-constraints[lightning]'``.
* :mod:`torch_constraints.integrations.transformers`: ``ProjectionCallback`` for
  the Hugging Face ``Trainer``; ``pip install 'torch-constraints[transformers]'``.

Accelerate needs no callback: :func:`~torch_constraints.project_after_step` takes
the optimizer ``accelerator.prepare`` returns. The docs page "With Lightning, Hugging
Face, Accelerate and timm" shows all three.
"""

from __future__ import annotations

__all__: list[str] = []
