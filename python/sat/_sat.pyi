"""Type stubs of the compiled module ``sat._sat`` (users import ``sat``)."""
from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

__version__: str

class SatError(RuntimeError):
    """A component, a plugin library or the host refused the call."""

def libtorch_version() -> str: ...
def _set_plugin_dir(dir: Union[str, PathLike[str]]) -> None: ...
def components(
    *, plugin_dirs: Sequence[str] = ..., allow_insecure_plugins: bool = ...
) -> List[Dict[str, str]]: ...

class Attack:
    def __init__(
        self,
        name: str,
        model: Any,
        *,
        plugin_dirs: Sequence[str] = ...,
        allow_insecure_plugins: bool = ...,
        **config: Any,
    ) -> None: ...
    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: int,
        *,
        epoch: int = ...,
        epochs: int = ...,
    ) -> torch.Tensor: ...
    @property
    def name(self) -> str: ...
    @property
    def epsilon(self) -> float: ...
    @property
    def norm(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def model(self) -> Any: ...
    @property
    def library(self) -> str: ...

class Saliency:
    def __init__(
        self,
        name: str,
        *,
        plugin_dirs: Sequence[str] = ...,
        allow_insecure_plugins: bool = ...,
        **config: Any,
    ) -> None: ...
    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        boxes: Optional[torch.Tensor] = ...,
        masks: Optional[torch.Tensor] = ...,
        present: Optional[torch.Tensor] = ...,
        teacher: Any = ...,
        classes: int = ...,
        epoch: int = ...,
        epochs: int = ...,
    ) -> torch.Tensor: ...
    @property
    def name(self) -> str: ...

class Objective:
    def __init__(
        self,
        name: str,
        *,
        plugin_dirs: Sequence[str] = ...,
        allow_insecure_plugins: bool = ...,
        **config: Any,
    ) -> None: ...
    def __call__(
        self,
        model: Any,
        images: torch.Tensor,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        saliency: Optional[torch.Tensor] = ...,
        *,
        classes: int,
        epoch: int = ...,
        epochs: int = ...,
    ) -> torch.Tensor: ...
    @property
    def logits(self) -> Optional[torch.Tensor]: ...
    @property
    def name(self) -> str: ...

def perturb(
    images: torch.Tensor,
    saliency: torch.Tensor,
    epsilon: float,
    epoch: int,
    epochs: int,
    *,
    seed: int,
    indices: Optional[torch.Tensor] = ...,
    base: Optional[float] = ...,
    period: Optional[float] = ...,
    probability: Optional[float] = ...,
    plugin_dirs: Sequence[str] = ...,
) -> torch.Tensor: ...
def evaluate(
    model: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: Sequence[str],
    epsilons: Sequence[float],
    batch_size: int = ...,
    max_samples: int = ...,
    seed: int = ...,
    components: Optional[Dict[str, Dict[str, Any]]] = ...,
    class_names: Optional[Sequence[str]] = ...,
    plugin_dirs: Sequence[str] = ...,
    allow_insecure_plugins: bool = ...,
) -> str: ...
def run(
    config: Union[str, PathLike[str]],
    overrides: Optional[Dict[str, Any]] = ...,
    *,
    plugin_dirs: Sequence[str] = ...,
    allow_insecure_plugins: bool = ...,
    verbose: int = ...,
) -> str: ...
def shapes(
    count: int, *, size: int = ..., classes: int = ..., seed: int = ..., split: int = ...
) -> Dict[str, Any]: ...
