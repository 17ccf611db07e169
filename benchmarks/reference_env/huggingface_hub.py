"""Stand-in for `huggingface_hub` in the reference benchmark's environment: nothing is downloaded.

The reference imports `hf_hub_download` (used only to fetch named models and sample data) and
`PyTorchModelHubMixin` (a base class adding hub upload/download methods). The benchmark loads a local
checkpoint, so the first refuses and the second adds nothing.
"""

from __future__ import annotations


def hf_hub_download(*args: object, **kwargs: object) -> str:
    raise RuntimeError("the reference benchmark never downloads: pass a local checkpoint path")


class PyTorchModelHubMixin:
    """No hub methods: the benchmark builds the model from a local checkpoint."""
