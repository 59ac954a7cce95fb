"""sat from PyTorch: saliency-guided adversarial training as building blocks.

The components are those of ``sat-host`` — the same plugin libraries, loaded with the
same trust rules — called on your tensors and your ``torch.nn.Module`` without copying
anything: the model is called back in Python for every forward pass, and gradients flow
through PyTorch's autograd as usual.

- :class:`Attack` — ``Attack("pgd", model, eps=8/255, steps=10)(images, labels)``,
  torchattacks' shape; every key of the attack is a keyword argument.
- :class:`Saliency` — maps in ``[-1, 1]`` from boxes, masks or a teacher model.
- :func:`perturb` — the SAT input for images and saliency maps (no gradient steps).
- :class:`Objective` — a training loss (``ce``, ``trades``, ``rrr``, …) to call
  ``.backward()`` on.
- :func:`evaluate` — clean and robust accuracy with the CLI's figures.
- :func:`run` — ``sat-host run`` in this process.

Images are float32 ``[N, C, H, W]`` in ``[0, 1]`` and labels int64 ``[N]``, on any
device; results stay on that device. Errors from components are :class:`SatError`.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

# libtorch must be loaded (by torch) before the extension module, which links it.
import torch

from . import _sat
from ._sat import SatError, __version__, libtorch_version

__all__ = [
    "Attack",
    "Objective",
    "SatError",
    "Saliency",
    "components",
    "evaluate",
    "perturb",
    "run",
    "shapes",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]

_PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"
_sat._set_plugin_dir(str(_PLUGIN_DIR))

if torch.__version__.split("+")[0] != libtorch_version():
    raise ImportError(
        f"sat was built against libtorch {libtorch_version()}, but torch "
        f"{torch.__version__} is imported; install torch=={libtorch_version()} "
        "or rebuild sat in this environment"
    )


def _made(make: Any, name: str, *args: Any, plugin_dirs: Iterable[PathLike], allow_insecure_plugins: bool, config: Dict[str, Any]) -> Any:
    """A compiled component ``make(name, *args)`` from the keywords of a constructor."""
    return make(
        name,
        *args,
        plugin_dirs=_dirs(plugin_dirs),
        allow_insecure_plugins=allow_insecure_plugins,
        **config,
    )


def _dirs(plugin_dirs: Iterable[PathLike]) -> List[str]:
    if isinstance(plugin_dirs, (str, bytes, os.PathLike)):
        plugin_dirs = [plugin_dirs]
    return [os.fspath(p) for p in plugin_dirs]


@contextlib.contextmanager
def _eval_mode(model: Any):
    """Puts an ``nn.Module`` in eval mode for the block and restores its mode after."""
    training = getattr(model, "training", None)
    if isinstance(model, torch.nn.Module) and training:
        model.eval()
        try:
            yield
        finally:
            model.train(training)
    else:
        yield


def _classes(model: Any, images: torch.Tensor) -> int:
    """The model's number of classes: the width of its logits on the first image."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images: expected a non-empty tensor [N, C, H, W], got shape {tuple(images.shape)}"
        )
    with torch.no_grad(), _eval_mode(model):
        out = model(images[:1])
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model must map images [N, C, H, W] to logits [N, classes]; it returned {shape}"
        )
    return int(out.shape[1])


class Attack:
    """An attack from sat's plugin libraries, in torchattacks' shape.

    ``Attack("pgd", model, eps=8/255, steps=10)(images, labels)`` returns adversarial
    images. ``model`` is any callable from images to logits: an ``nn.Module`` (put in
    eval mode during the attack and restored after, as torchattacks does), a TorchScript
    module or a function. Every key of the attack's configuration is a keyword argument
    (``eps`` is accepted for ``epsilon``); an unknown key raises ``TypeError`` listing the
    accepted ones. Random draws come from torch's default generator
    (``torch.manual_seed`` makes an attack reproducible).
    """

    def __init__(
        self,
        name: str,
        model: Any,
        *,
        plugin_dirs: Iterable[PathLike] = (),
        allow_insecure_plugins: bool = False,
        **config: Any,
    ) -> None:
        self._attack = _made(
            _sat.Attack, name, model, plugin_dirs=plugin_dirs, allow_insecure_plugins=allow_insecure_plugins, config=config
        )
        self.model = model
        self._num_classes: Optional[int] = None

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, *, epoch: int = 0, epochs: int = 1
    ) -> torch.Tensor:
        """Adversarial images for ``images`` (float32 ``[N, C, H, W]`` in ``[0, 1]``) and
        their true ``labels`` (int64 ``[N]``), on the same device."""
        if self._num_classes is None:
            self._num_classes = _classes(self.model, images)
        with _eval_mode(self.model):
            return self._attack(images, labels, self._num_classes, epoch=epoch, epochs=epochs)

    forward = __call__

    @property
    def name(self) -> str:
        """The attack's name."""
        return self._attack.name

    @property
    def eps(self) -> float:
        """Its budget ε, in its norm."""
        return self._attack.epsilon

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``."""
        return self._attack.norm

    @property
    def steps(self) -> int:
        """Its number of gradient steps (0: none)."""
        return self._attack.steps

    def __repr__(self) -> str:
        return f"Attack({self.name!r}, eps={self.eps:g}, norm={self.norm!r}, steps={self.steps})"


class Saliency:
    """A saliency source from sat's plugin libraries.

    ``Saliency("masks")(images, labels, masks=masks)`` returns maps ``[N, 1 or C, H, W]``
    in ``[-1, 1]``. Sources read ``boxes`` (``[N, B, 4]``: ``x0, y0, x1, y1`` in pixels,
    rows of ``-1`` are padding), ``masks`` (``[N, 1, H, W]`` in ``[0, 1]``, with
    ``present``, ``[N]`` bool, for samples that have one) or a ``teacher`` model (the
    gradient sources that differentiate it: ``"gradient"``, ``"smoothgrad"``,
    ``"integrated-gradients"``).
    """

    def __init__(
        self,
        name: str,
        *,
        plugin_dirs: Iterable[PathLike] = (),
        allow_insecure_plugins: bool = False,
        **config: Any,
    ) -> None:
        self._source = _made(
            _sat.Saliency, name, plugin_dirs=plugin_dirs, allow_insecure_plugins=allow_insecure_plugins, config=config
        )

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        boxes: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
        present: Optional[torch.Tensor] = None,
        teacher: Any = None,
        epoch: int = 0,
        epochs: int = 1,
    ) -> torch.Tensor:
        """The maps for ``images`` and ``labels``."""
        classes = 0
        if teacher is not None:
            classes = _classes(teacher, images)
        with _eval_mode(teacher):
            return self._source(
                images,
                labels,
                boxes=boxes,
                masks=masks,
                present=present,
                teacher=teacher,
                classes=classes,
                epoch=epoch,
                epochs=epochs,
            )

    @property
    def name(self) -> str:
        """The source's name."""
        return self._source.name

    def __repr__(self) -> str:
        return f"Saliency({self.name!r})"


def perturb(
    images: torch.Tensor,
    saliency: torch.Tensor,
    eps: float,
    epoch: int,
    epochs: int,
    *,
    base: Optional[float] = None,
    period: Optional[float] = None,
    probability: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    indices: Optional[torch.Tensor] = None,
    plugin_dirs: Iterable[PathLike] = (),
) -> torch.Tensor:
    """The SAT input ``clip(x − ε·g)``: ``g`` takes the saliency map with probability
    ``p_t = 1 − base^(epoch/period)`` (the curriculum; ``probability`` fixes it) and a
    random sign otherwise, per element; no gradient step.

    The draws are keyed by a seed taken from ``generator`` (torch's default generator
    when ``None``: ``torch.manual_seed`` makes it reproducible) and by each sample's
    index in ``indices`` (default ``0..N``), as the CLI keys them by the sample's index in
    the data set.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    return _sat.perturb(
        images,
        saliency,
        float(eps),
        epoch,
        epochs,
        seed=seed,
        indices=indices,
        base=base,
        period=period,
        probability=probability,
        plugin_dirs=_dirs(plugin_dirs),
    )


class Objective:
    """A training objective from sat's plugin libraries.

    ``Objective("trades", beta=6.0)(model, images, inputs, labels)`` returns the scalar
    loss of ``model`` (in the mode you put it in: ``model.train()`` for training) on
    ``inputs`` (an attack's or :func:`perturb`'s output; the clean images for standard
    training), with a graph to the model's parameters: call ``.backward()`` on it.
    Objectives that use saliency (``rrr``) take ``saliency`` maps. :attr:`logits` holds
    the model's logits on the inputs of the last call.
    """

    def __init__(
        self,
        name: str,
        *,
        plugin_dirs: Iterable[PathLike] = (),
        allow_insecure_plugins: bool = False,
        **config: Any,
    ) -> None:
        self._objective = _made(
            _sat.Objective, name, plugin_dirs=plugin_dirs, allow_insecure_plugins=allow_insecure_plugins, config=config
        )
        self._num_classes: Dict[int, int] = {}

    def __call__(
        self,
        model: Any,
        images: torch.Tensor,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        saliency: Optional[torch.Tensor] = None,
        *,
        epoch: int = 0,
        epochs: int = 1,
    ) -> torch.Tensor:
        """The loss; see the class documentation."""
        key = id(model)
        if key not in self._num_classes:
            self._num_classes[key] = _classes(model, images)
        return self._objective(
            model,
            images,
            inputs,
            labels,
            saliency,
            classes=self._num_classes[key],
            epoch=epoch,
            epochs=epochs,
        )

    @property
    def logits(self) -> Optional[torch.Tensor]:
        """The model's logits on the inputs of the last call."""
        return self._objective.logits

    @property
    def name(self) -> str:
        """The objective's name."""
        return self._objective.name

    def __repr__(self) -> str:
        return f"Objective({self.name!r})"


def _whole(name: str, value: Any, least: int) -> None:
    """Refuses ``value`` unless it is an integer of at least ``least``, naming ``name``
    (the extension would raise an ``OverflowError`` that names nothing)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer of at least {least}, not {value!r}")


def evaluate(
    model: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Sequence[str] = ("apgd-ce",),
    eps: Union[float, Sequence[float]] = (8 / 255,),
    *,
    batch_size: int = 256,
    max_samples: int = 0,
    seed: int = 0,
    components: Optional[Dict[str, Dict[str, Any]]] = None,
    class_names: Optional[Sequence[str]] = None,
    plugin_dirs: Iterable[PathLike] = (),
    allow_insecure_plugins: bool = False,
) -> Dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``images`` and ``labels``, measured as
    ``sat-host eval`` measures them (same batches, per-batch seeds and checks).

    Every attack of ``attacks`` runs at every budget of ``eps`` on ``max_samples`` images
    spread over the set (0: all); ``components`` gives attacks their keys, e.g.
    ``{"apgd-ce": {"steps": 100}}``. Returns a dict with ``clean_accuracy``,
    ``clean_per_class``, ``class_names`` and ``robust_accuracy``: one dict per attack and
    budget with ``accuracy``, ``per_class``, ``confusion``, ``misclassified``, ``fooled``
    and the median ℓ2 and ℓ∞ norms of the perturbations of the fooled images (those the
    model got right before the attack and wrong after).
    """
    epsilons = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if isinstance(attacks, str):
        attacks = [attacks]
    _whole("batch_size", batch_size, 1)
    _whole("max_samples", max_samples, 0)
    _whole("seed", seed, 0)
    if class_names is None:
        # As many classes as the model has logits, whichever labels this set holds.
        class_names = [str(c) for c in range(_classes(model, images))]
    with _eval_mode(model):
        text = _sat.evaluate(
            model,
            images,
            labels,
            attacks=list(attacks),
            epsilons=epsilons,
            batch_size=batch_size,
            max_samples=max_samples,
            seed=seed,
            components=components,
            class_names=list(class_names),
            plugin_dirs=_dirs(plugin_dirs),
            allow_insecure_plugins=allow_insecure_plugins,
        )
    return json.loads(text)


def run(
    config: PathLike,
    overrides: Optional[Dict[str, Any]] = None,
    *,
    plugin_dirs: Iterable[PathLike] = (),
    allow_insecure_plugins: bool = False,
    verbose: int = 0,
) -> Dict[str, Any]:
    """Runs ``sat-host run --config CONFIG`` in this process, with ``overrides`` as
    ``--set key=value`` (``{"train.epochs": 3}``), and returns the run directory's
    ``metrics.json`` as a dict, with ``run_dir`` added. An interrupted run (Ctrl-C)
    raises ``KeyboardInterrupt`` naming the directory to resume."""
    run_dir = _sat.run(
        os.fspath(config),
        overrides,
        plugin_dirs=_dirs(plugin_dirs),
        allow_insecure_plugins=allow_insecure_plugins,
        verbose=verbose,
    )
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    metrics["run_dir"] = str(run_dir)
    return metrics


def components(
    *, plugin_dirs: Iterable[PathLike] = (), allow_insecure_plugins: bool = False
) -> List[Dict[str, Any]]:
    """Every component of the plugin libraries found: ``name``, ``kind``,
    ``description``, ``keys`` (the accepted keyword arguments) and ``library``."""
    listed = _sat.components(
        plugin_dirs=_dirs(plugin_dirs), allow_insecure_plugins=allow_insecure_plugins
    )
    return [dict(c, keys=[k for k in c["keys"].split(",") if k]) for c in listed]


def shapes(count: int, *, size: int = 32, classes: int = 6, seed: int = 0, split: str = "train") -> Dict[str, Any]:
    """``count`` images of sat's generated ``shapes`` task (the quickstart's data set),
    exactly as ``[data] dataset = "shapes"`` makes them: ``images`` (float32
    ``[N, 3, size, size]`` in ``[0, 1]``), ``labels``, ``boxes`` (``[N, 1, 4]``), ``masks``
    (``[N, 1, size, size]``), ``present`` and ``class_names``. ``split`` is ``"train"`` or
    ``"test"`` (independent streams of the same seed)."""
    splits = {"train": 0, "test": 1}
    if split not in splits:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _sat.shapes(count, size=size, classes=classes, seed=seed, split=splits[split])
