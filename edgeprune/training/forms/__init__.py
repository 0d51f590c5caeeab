"""Each method's training form (one module per method) and their registry.

``FORMS`` maps a method name to the module that defines its form (the module's
``FORM``); a new method's training is one module here plus one line in ``FORMS``.
"""

from __future__ import annotations

import importlib

from edgeprune.core.errors import EdgepruneError
from edgeprune.training.forms.base import FormOutput, TrainingForm
from edgeprune.training.forms.dynamicvit import (
    DynamicViTTraining,
    block_with_policy,
    distillation_losses,
    init_keep_all_,
    softmax_with_policy,
    teacher_forward,
)

FORMS: dict[str, str] = {
    "dynamicvit": "dynamicvit",
    "evit": "evit",
    "tome": "tome",
    "avit": "avit",
    "spvit": "spvit",
}


def get_form(method: str) -> type[TrainingForm]:
    """The training form class of ``method``."""
    if method not in FORMS:
        raise EdgepruneError(
            f"no training form for method '{method}'", f"expected: {', '.join(sorted(FORMS))}"
        )
    return importlib.import_module(f"{__name__}.{FORMS[method]}").FORM


__all__ = [
    "FORMS",
    "DynamicViTTraining",
    "FormOutput",
    "TrainingForm",
    "block_with_policy",
    "distillation_losses",
    "get_form",
    "init_keep_all_",
    "softmax_with_policy",
    "teacher_forward",
]
