"""Loading a user's network and inputs from files, for ``reluinv analyze``.

A network comes in one of three forms (:func:`load_model`):

* a **TorchScript file** (``torch.jit.save`` of a scripted *or* traced ``nn.Sequential``).  A
  TorchScript module is opaque to :mod:`reluinv.network`, so an equivalent ``nn.Sequential`` of
  standard torch modules is rebuilt from its children (:func:`sequential_from_torchscript`): each
  child is recognised by its class (``original_name``, and the qualified TorchScript type name, so
  that a user's own class that happens to be called ``Linear`` is not mistaken for torch's), its
  parameters and buffers are copied, and its settings (stride, padding, slope, ...) are read from
  the attributes a scripted module keeps or, for a traced one, from the constants in its recorded
  graph.
* a **torch.export archive** (``.pt2``, ``torch.export.save``): rebuilt as ``torch.nn`` modules
  at their module paths by :func:`reluinv.model_export.module_from_exported`, then analysed as a
  traced graph (residual additions, max-pooling, ...);
* a **builder** ``module:function``: ``module`` is imported (the current working directory is put
  on ``sys.path`` first), ``function()`` is called with no arguments and must return an
  ``nn.Module``; ``weights`` (a state dict saved with ``torch.save``) is then loaded into it.

Either way the model is returned on the CPU in eval mode.

Inputs (:func:`load_inputs`) are ``.npy``, ``.npz`` (the array ``inputs``, else the first one) or
``.pt`` (a tensor), with a leading sample axis: shape ``(N, *input_shape)``, floating point,
finite.  Whether ``input_shape`` fits the model is checked by :func:`reluinv.experiments.analyze.analyze`.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._validate import as_model_input

__all__ = ["INPUT_SUFFIXES", "as_input_batch", "load_inputs", "load_model", "sequential_from_torchscript"]

#: File name endings :func:`load_inputs` reads.
INPUT_SUFFIXES = (".npy", ".npz", ".pt", ".pth")

# Module classes rebuilt from TorchScript, by their class name.
_DROPOUT_CLASSES: dict[str, type[nn.Module]] = {
    "Dropout": nn.Dropout,
    "Dropout1d": nn.Dropout1d,
    "Dropout2d": nn.Dropout2d,
    "Dropout3d": nn.Dropout3d,
    "AlphaDropout": nn.AlphaDropout,
}
_TORCH_MODULE_PREFIX = "__torch__.torch.nn.modules."


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def load_model(spec: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """Load the network named by ``spec``, on the CPU, in eval mode.

    Args:
        spec: a TorchScript file (scripted or traced ``nn.Sequential``), a ``torch.export``
            archive (a ``.pt2`` file), or ``"module:function"``
            naming an importable function that builds the ``nn.Module`` (called with no
            arguments; the current working directory is put on ``sys.path`` so a ``models.py``
            next to the user's data imports as ``models``).  An existing file wins over the
            ``module:function`` reading.
        weights: a state dict file (``torch.save(model.state_dict(), path)``), loaded with
            ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``.  With a
            TorchScript file it replaces the weights stored in it.

    Returns:
        The model: for TorchScript, an ``nn.Sequential`` of standard torch modules (see
        :func:`sequential_from_torchscript`); for a builder, what the function returned.

    Raises:
        FileNotFoundError: ``spec`` is neither a file nor ``module:function``; ``weights`` missing.
        ValueError: the module or function cannot be imported or called, does not give an
            ``nn.Module``; the file is not TorchScript; a TorchScript child is not supported; the
            weights do not fit the model (missing or unexpected keys, wrong shapes).

    Example::

        model = load_model("net.torchscript")                          # jit.save'd Sequential
        model = load_model("models:small_cnn", weights="cnn.pt")       # models.py in the cwd
    """
    text = os.fspath(spec)
    path = Path(text)
    if path.is_file() and path.suffix == ".pt2":
        model = _load_exported(path)
    elif path.is_file():
        model = sequential_from_torchscript(_load_torchscript(path))
    elif path.exists():
        raise ValueError(f"MODEL {text!r} is a folder, not a TorchScript file")
    elif _looks_like_builder(text):
        model = _call_builder(text)
    else:
        raise FileNotFoundError(
            f"MODEL {text!r} is neither an existing TorchScript file nor module:function "
            f"(e.g. mymodels:build_net, with mymodels.py in the current folder)"
        )
    if weights is not None:
        _load_weights(model, Path(os.fspath(weights)))
    return model.cpu().eval()


def _looks_like_builder(text: str) -> bool:
    module, sep, function = text.partition(":")
    parts = module.split(".") + function.split(".")
    return bool(sep) and all(part.isidentifier() for part in parts)


def _call_builder(text: str) -> nn.Module:
    module_name, _, function_name = text.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for MODEL {text!r} ({exc}); it must be importable "
            f"from the current folder {cwd} or from the installed packages"
        ) from exc
    target: Any = module
    for attribute in function_name.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {function_name!r} (MODEL {text!r})") from None
    if not callable(target):
        raise ValueError(f"{text!r} names a {type(target).__name__}, not a function that builds the model")
    try:
        model = target()
    except Exception as exc:
        raise ValueError(f"{text}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{text}() must return a torch.nn.Module, got {type(model).__name__}")
    return model


def _load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read weights file {str(path)!r} as a state dict ({type(exc).__name__}: {exc}); "
            f"save it with torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict of tensors; "
            f"save it with torch.save(model.state_dict(), path)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {str(path)!r} do not fit the model: {exc}") from exc


def _load_exported(path: Path) -> nn.Module:
    """A ``torch.export`` archive as a traceable module (see :mod:`reluinv.model_export`)."""
    from .model_export import module_from_exported

    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"MODEL {str(path)!r} is not a torch.export archive (torch.export.load failed: {first})"
        ) from exc
    return module_from_exported(program)


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # torch 2.9+ marks TorchScript as deprecated; loading a user's file is still our job.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ValueError(
            f"MODEL {str(path)!r} is not a TorchScript file (torch.jit.load failed: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); save a scripted or "
            f"traced nn.Sequential with torch.jit.save, or give module:function and --weights"
        ) from exc


def sequential_from_torchscript(script: torch.jit.ScriptModule) -> nn.Sequential:
    """An ``nn.Sequential`` of standard torch modules equivalent to a TorchScript ``Sequential``.

    Works for ``torch.jit.script`` and ``torch.jit.trace`` of an ``nn.Sequential`` (nested ones
    included).  Rebuilt: ``Linear``, ``Conv2d`` (stride, padding incl. ``"same"``/``"valid"``,
    padding mode, dilation, groups), ``ReLU``, ``LeakyReLU``, ``ELU``, ``Tanh``, ``Flatten``,
    ``AvgPool2d``, ``BatchNorm1d``/``BatchNorm2d``, ``Identity`` and the dropout modules.  The
    result is in eval mode; its outputs equal the TorchScript module's in eval mode.

    Raises:
        ValueError: the top module is not a ``Sequential`` (e.g. a traced custom ``nn.Module``,
            whose forward may do more than chain its children), or a child is of any other class
            (``MaxPool2d``, a user's module, ...), naming its position and class.

    Example::

        scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
        sequential_from_torchscript(scripted)      # Sequential(Linear(4, 3), ReLU())
    """
    name = _class_name(script)
    if name != "Sequential" or not _is_torch_class(script):
        raise ValueError(
            f"the TorchScript model is a {name}, not an nn.Sequential; TorchScript is read only as a "
            f"plain chain of modules (a scripted forward cannot be traced by torch.fx), so save "
            f"nn.Sequential(...), or give a torch.export archive (.pt2) or module:function with --weights"
        )
    return _rebuild_sequential(script, prefix="").eval()


def _rebuild_sequential(script: Any, *, prefix: str) -> nn.Sequential:
    modules: list[nn.Module] = []
    for child_name, child in script.named_children():
        where = f"{prefix}{child_name}"
        if _class_name(child) == "Sequential" and _is_torch_class(child):
            modules.append(_rebuild_sequential(child, prefix=f"{where}."))
        else:
            modules.append(_rebuild_module(child, where))
    return nn.Sequential(*modules)


def _class_name(script: Any) -> str:
    return str(getattr(script, "original_name", type(script).__name__))


def _qualified_type(script: Any) -> str | None:
    try:
        return str(script._c._type().qualified_name())
    except Exception:  # private API; without it the class name alone decides
        return None


def _is_torch_class(script: Any) -> bool:
    qualified = _qualified_type(script)
    return qualified is None or qualified.startswith(_TORCH_MODULE_PREFIX)


def _rebuild_module(script: Any, where: str) -> nn.Module:
    name = _class_name(script)
    builder = _BUILDERS.get(name)
    if builder is None and name in _DROPOUT_CLASSES:
        builder = _rebuild_dropout
    if builder is None or not _is_torch_class(script):
        from .network import SUPPORTED_MODULES

        origin = "" if _is_torch_class(script) else f" (user class {_qualified_type(script)})"
        hint = (
            "; max pooling is not a chain of affine maps and pointwise activations, use strided "
            "convolutions or AvgPool2d"
            if name.startswith(("MaxPool", "AdaptiveMaxPool"))
            else ""
        )
        raise ValueError(
            f"TorchScript module {where!r} ({name}{origin}) is not supported{hint}; supported modules: "
            f"{', '.join(SUPPORTED_MODULES)}, Sequential"
        )
    try:
        return builder(script)
    except _NotReadable as exc:
        raise ValueError(f"TorchScript module {where!r} ({name}): {exc}") from None


class _NotReadable(Exception):
    """A setting of a TorchScript module could not be recovered."""


def _tensors(script: Any) -> dict[str, torch.Tensor]:
    found = dict(script.named_parameters(recurse=False))
    found.update(dict(script.named_buffers(recurse=False)))
    return {key: value.detach().clone() for key, value in found.items()}


def _settings(script: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    """The named attributes a scripted module keeps; ``None`` if any is missing (traced)."""
    out = {}
    for name in names:
        try:
            out[name] = getattr(script, name)
        except AttributeError:
            return None
    return out


def _graph_call(script: Any, ops: tuple[str, ...]) -> tuple[str, list[Any]]:
    """The (only) call of one of ``ops`` in a traced module's graph, with its constant arguments.

    Arguments that are not constants (the input, parameters) come back as :class:`_NonConstant`
    markers, so positions stay aligned.
    """
    calls = [node for node in script.graph.nodes() if node.kind() in ops]
    if len(calls) != 1:
        raise _NotReadable(
            f"expected one call of {' or '.join(ops)} in its graph, found {len(calls)}; "
            f"save it with torch.jit.script instead"
        )
    return calls[0].kind(), [_constant(value) for value in calls[0].inputs()]


class _NonConstant:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _constant(value: Any) -> Any:
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_constant(item) for item in node.inputs()]
    return _NonConstant(node.kind())


def _graph_pad(script: Any) -> tuple[list[int], str] | None:
    """``(pads, mode)`` of an ``aten::pad`` before a traced convolution (non-zero padding modes)."""
    pads = [node for node in script.graph.nodes() if node.kind() == "aten::pad"]
    if not pads:
        return None
    if len(pads) > 1:
        raise _NotReadable("more than one padding call in its graph; save it with torch.jit.script")
    arguments = [_constant(value) for value in pads[0].inputs()]
    return list(arguments[1]), str(arguments[2])


def _copy_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    # strict=True: a scripted module with an unexpected tensor (or one missing) is not this class.
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise _NotReadable(f"its parameters do not fit {type(module).__name__}: {exc}") from None
    return module


def _rebuild_linear(script: Any) -> nn.Module:
    tensors = _tensors(script)
    if "weight" not in tensors or tensors["weight"].dim() != 2:
        raise _NotReadable("no 2-d weight")
    out_features, in_features = tensors["weight"].shape
    module = nn.Linear(in_features, out_features, bias="bias" in tensors)
    return _copy_tensors(module, tensors)


def _rebuild_conv2d(script: Any) -> nn.Module:
    tensors = _tensors(script)
    weight = tensors.get("weight")
    if weight is None or weight.dim() != 4:
        raise _NotReadable("no 4-d weight")
    settings = _settings(script, ("stride", "padding", "dilation", "groups", "padding_mode"))
    if settings is None:
        settings = _traced_conv2d_settings(script)
    groups = int(settings["groups"])
    out_channels, in_per_group, kh, kw = weight.shape
    padding = settings["padding"]
    try:
        module = nn.Conv2d(
            in_per_group * groups,
            out_channels,
            (kh, kw),
            stride=tuple(settings["stride"]),
            padding=padding if isinstance(padding, str) else tuple(padding),
            dilation=tuple(settings["dilation"]),
            groups=groups,
            bias="bias" in tensors,
            padding_mode=cast(Any, str(settings["padding_mode"])),
        )
    except ValueError as exc:
        raise _NotReadable(f"its settings {settings} do not make a Conv2d: {exc}") from None
    expected = settings.get("expected_pads")
    if expected is not None and list(module._reversed_padding_repeated_twice) != list(expected):
        raise _NotReadable(f"asymmetric padding {expected} that Conv2d cannot express")
    return _copy_tensors(module, tensors)


def _traced_conv2d_settings(script: Any) -> dict[str, Any]:
    op, args = _graph_call(script, ("aten::_convolution", "aten::_convolution_mode", "aten::conv2d"))
    stride, padding, dilation = args[3], args[4], args[5]
    if op == "aten::_convolution":
        if args[6] is not False:
            raise _NotReadable("a transposed convolution is not a Conv2d")
        groups = args[8]
    else:
        groups = args[6]
    settings = {
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "padding_mode": "zeros",
    }
    pad = _graph_pad(script)
    if pad is not None:
        pads, mode = pad
        if any(p != 0 for p in (padding if isinstance(padding, list) else [1])):
            raise _NotReadable("padding both before and inside the convolution")
        if len(pads) != 4:
            raise _NotReadable(f"padding {pads} is not for two spatial axes")
        if pads[0] == pads[1] and pads[2] == pads[3]:
            settings["padding"] = [pads[2], pads[0]]  # F.pad lists the last (width) axis first
        else:
            # Conv2d pads a "same" convolution asymmetrically when the kernel span is even;
            # _rebuild_conv2d checks that "same" gives exactly these pads.
            settings["padding"] = "same"
            settings["expected_pads"] = pads
        settings["padding_mode"] = mode
    if not all(isinstance(v, list) and all(isinstance(i, int) for i in v) for v in (stride, dilation)):
        raise _NotReadable("stride or dilation are not constants in its graph")
    if not isinstance(settings["padding"], (list, str)) or not isinstance(groups, int):
        raise _NotReadable("padding or groups are not constants in its graph")
    return settings


def _refuse_scripted_training(script: Any, settings: dict[str, Any] | None) -> None:
    """A scripted dropout or batch-norm module saved in training mode is refused, as the same
    module in training mode is (reluinv.network): its forward is random or batch-dependent, and
    analysing it in eval mode would silently analyse another network.  (A traced one has its
    mode baked into the graph; that case warns.)"""
    if settings is not None and bool(getattr(script, "training", False)):
        raise _NotReadable(
            "was saved in training mode (random or batch-dependent, so the network has no fixed "
            "linear regions); call model.eval() before torch.jit.script and save it again"
        )


def _rebuild_batchnorm(script: Any, cls: type[nn.Module]) -> nn.Module:
    tensors = _tensors(script)
    mean = tensors.get("running_mean")
    weight = tensors.get("weight")
    reference = mean if mean is not None else weight
    if reference is None:
        raise _NotReadable("neither running statistics nor an affine weight")
    settings = _settings(script, ("eps", "momentum"))
    _refuse_scripted_training(script, settings)
    if settings is None:
        _, args = _graph_call(script, ("aten::batch_norm",))
        if args[5] is not False:
            warnings.warn(
                "a BatchNorm module was traced in training mode (batch statistics); reluinv uses its "
                "running statistics, as in eval mode",
                stacklevel=4,
            )
        settings = {"eps": args[7], "momentum": args[6]}
    momentum = settings["momentum"]
    module = cls(
        reference.numel(),
        eps=float(settings["eps"]),
        momentum=None if momentum is None or isinstance(momentum, _NonConstant) else float(momentum),
        affine=weight is not None,
        track_running_stats=mean is not None,
    )
    return _copy_tensors(module, tensors)


def _rebuild_avgpool2d(script: Any) -> nn.Module:
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    settings = _settings(script, names)
    if settings is None:
        _, args = _graph_call(script, ("aten::avg_pool2d",))
        settings = dict(zip(names, args[1:7], strict=False))
        if not settings["stride"]:  # an empty stride list means "the kernel size"
            settings["stride"] = settings["kernel_size"]
    as_pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else int(v)  # noqa: E731
    return nn.AvgPool2d(
        as_pair(settings["kernel_size"]),
        stride=as_pair(settings["stride"]) if settings["stride"] is not None else None,
        padding=as_pair(settings["padding"]),
        ceil_mode=bool(settings["ceil_mode"]),
        count_include_pad=bool(settings["count_include_pad"]),
        divisor_override=settings["divisor_override"],
    )


def _rebuild_flatten(script: Any) -> nn.Module:
    settings = _settings(script, ("start_dim", "end_dim"))
    if settings is None:
        _, args = _graph_call(script, ("aten::flatten",))
        settings = {"start_dim": args[1], "end_dim": args[2]}
    return nn.Flatten(int(settings["start_dim"]), int(settings["end_dim"]))


def _rebuild_activation(script: Any, make: Callable[[float], nn.Module], setting: str, op: str) -> nn.Module:
    """An activation with one float setting (``LeakyReLU``'s slope, ``ELU``'s alpha): the scripted
    module's attribute, else the second argument of the traced call of ``op`` (or ``op_``)."""
    settings = _settings(script, (setting,))
    if settings is None:
        _, args = _graph_call(script, (op, f"{op}_"))
        settings = {setting: args[1]}
    return make(float(settings[setting]))


def _rebuild_dropout(script: Any) -> nn.Module:
    name = _class_name(script)
    settings = _settings(script, ("p",))
    _refuse_scripted_training(script, settings)
    if settings is None:
        ops = (
            "aten::dropout",
            "aten::dropout_",
            "aten::feature_dropout",
            "aten::feature_dropout_",
            "aten::alpha_dropout",
            "aten::alpha_dropout_",
            "aten::feature_alpha_dropout",
        )
        calls = [node for node in script.graph.nodes() if node.kind() in ops]
        args = [_constant(value) for value in calls[0].inputs()] if len(calls) == 1 else []
        if len(args) >= 3 and args[2] is True:
            warnings.warn(
                f"a {name} module was traced in training mode (random); reluinv analyses it in eval "
                f"mode, where it is the identity",
                stacklevel=4,
            )
        # p does not matter in eval mode (the identity); keep it when the graph shows it.
        settings = {"p": args[1] if len(args) >= 2 and isinstance(args[1], float) else 0.5}
    return _DROPOUT_CLASSES[name](float(settings["p"]))


_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "Linear": _rebuild_linear,
    "Conv2d": _rebuild_conv2d,
    "BatchNorm1d": lambda script: _rebuild_batchnorm(script, nn.BatchNorm1d),
    "BatchNorm2d": lambda script: _rebuild_batchnorm(script, nn.BatchNorm2d),
    "AvgPool2d": _rebuild_avgpool2d,
    "Flatten": _rebuild_flatten,
    "ReLU": lambda script: nn.ReLU(),
    "LeakyReLU": lambda script: _rebuild_activation(
        script, nn.LeakyReLU, "negative_slope", "aten::leaky_relu"
    ),
    "ELU": lambda script: _rebuild_activation(script, nn.ELU, "alpha", "aten::elu"),
    "Tanh": lambda script: nn.Tanh(),
    "Identity": lambda script: nn.Identity(),
}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def load_inputs(path: str | os.PathLike[str]) -> NDArray[np.float64]:
    """Read a batch of inputs, shape ``(N, *input_shape)``, as a float64 array.

    Args:
        path: ``.npy``; ``.npz`` (the array named ``inputs`` if there is one, else the first
            array in the file); ``.pt``/``.pth`` (a tensor saved with ``torch.save``, read with
            ``weights_only=True``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown suffix; unreadable file; not an array/tensor; not floating point
            (integer images must be converted and scaled as the model was trained); fewer than 2
            dimensions (no sample axis); no samples; NaN or infinite entries (naming the first
            sample that has one).

    Example::

        np.save("x.npy", np.random.rand(10, 1, 28, 28).astype(np.float32))
        load_inputs("x.npy").shape        # (10, 1, 28, 28), dtype float64
    """
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"inputs file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"inputs {str(path)!r} is a folder, not a file")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(
            f"inputs file {str(path)!r}: unknown type {suffix or '(no suffix)'!r}; "
            f"use {', '.join(INPUT_SUFFIXES)}"
        )
    try:
        raw = _read_array(path, suffix)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read inputs file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    return as_input_batch(raw, source=str(path))


def _read_array(path: Path, suffix: str) -> np.ndarray | torch.Tensor:
    if suffix in (".npy", ".npz"):
        try:
            return _read_numpy(path, suffix)
        except ValueError as exc:
            if "Object arrays cannot be loaded" in str(exc):
                raise ValueError(
                    f"inputs file {str(path)!r} holds an object array (Python objects, which only "
                    f"pickle can read, and reluinv does not unpickle inputs); save a numeric array"
                ) from exc
            if str(path) in str(exc):
                raise
            raise ValueError(f"cannot read inputs file {str(path)!r}: {exc}") from exc
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"inputs file {str(path)!r} holds a {type(data).__name__}, not a tensor")
    return data  # as_input_batch checks and converts it


def _read_numpy(path: Path, suffix: str) -> np.ndarray:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if not names:
            raise ValueError(f"inputs file {str(path)!r} holds no arrays")
        return archive["inputs" if "inputs" in names else names[0]]


def as_input_batch(raw: Any, *, source: str = "inputs") -> NDArray[np.float64]:
    """Check a batch of inputs (floating point, a sample axis, at least one sample, finite) and
    return it as a C-contiguous float64 array; ``source`` names it in error messages.

    Example::

        as_input_batch(np.zeros((2, 3), np.float32)).dtype      # float64
    """
    where = source
    if isinstance(raw, torch.Tensor):
        dtype, floating = raw.dtype, raw.is_floating_point()
    else:
        raw = np.asarray(raw)
        dtype, floating = raw.dtype, np.issubdtype(raw.dtype, np.floating)
    if not floating:
        raise ValueError(
            f"inputs in {where!r} must be floating point, got {dtype}; convert (and scale) them "
            f"as the model expects"
        )
    return as_model_input(raw, f"inputs in {where!r}", samples=True)
