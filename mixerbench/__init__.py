"""mixerbench: reproduce the MLP-Mixer benchmarks (Tolstikhin et al., arXiv 2105.01601).

Public API: `create_model`, `list_models`, `model_info` (the zoo), and, in submodules,
`mixerbench.data.get_dataset`, `mixerbench.train.train`, `mixerbench.evaluate.linear_fewshot`,
`mixerbench.bench`, `mixerbench.report`. Imports are lazy so the CLI starts fast.
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy re-exports: importing mixerbench must not import torch
    if name in ("create_model", "list_models", "model_info", "resolve_name"):
        from mixerbench import models

        return getattr(models, name)
    raise AttributeError(f"module 'mixerbench' has no attribute {name!r}")


__all__ = ["__version__", "create_model", "list_models", "model_info", "resolve_name"]
