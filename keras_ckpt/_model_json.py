"""Rebuilding a model from a directory's `model.json` without running code from the file.

`model.json` is `model.to_json()`: the architecture and, when the model was compiled at the
first save, its `compile_config` (optimizer, loss, metrics). Before Keras sees it, every
object the file names is checked here; anything that could run code the user did not supply
is refused, naming the file and the object:

- a Python lambda stored as bytecode (`Lambda(lambda x: ...)`), in a `Lambda` layer or
  anywhere else;
- a class or function outside the Keras packages that is neither in `custom_objects` nor
  registered with `@keras.saving.register_keras_serializable()` (no module named by the
  file is ever imported);
- an unknown special object (`__...__` class names other than Keras' plain-data ones).

Then Keras deserialises it in safe mode. A compile config that cannot be rebuilt this way is
dropped with a warning (the model comes back uncompiled); the architecture never is.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import keras

from keras_ckpt import _fs
from keras_ckpt._layout import MODEL_JSON
from keras_ckpt.errors import CheckpointCorruptError, CheckpointNotFoundError

_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")  # what Keras itself imports
_BUILTIN_MODULES = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
)
_PLAIN_DATA = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__"}
_CONTAINERS = {"__slice__"}  # plain data whose config holds more objects


def model_json_path(directory: str) -> str:
    return _fs.join(directory, MODEL_JSON)


def model_json_text(model: Any) -> str:
    """`model.to_json()`, with the optimizer the model really trains with.

    Under the `mixed_float16` policy, `compile` wraps the optimizer it is given in a
    `LossScaleOptimizer`, but the compile config records the optimizer as given (a plain
    `Adam`). A process whose policy is the default would rebuild that plain optimizer, which
    the checkpoint's loss-scaled state does not fit; so the wrapper is recorded instead (its
    inner optimizer, initial scale and growth steps), and comes back in any process.

    Raises:
        Whatever `model.to_json()` raises (a subclassed model without `get_config`).
    """
    text = model.to_json()
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return text
    config = json.loads(text)
    recorded = (config.get("compile_config") or {}).get("optimizer")
    if recorded is None or (
        isinstance(recorded, dict) and recorded.get("class_name") == "LossScaleOptimizer"
    ):
        return text
    config["compile_config"]["optimizer"] = keras.saving.serialize_keras_object(optimizer)
    return json.dumps(config)


def read_config(directory: str) -> dict[str, Any]:
    """The parsed `model.json` of `directory`.

    Raises:
        CheckpointNotFoundError: there is no `model.json`.
        CheckpointCorruptError: it is not a JSON object.
    """
    path = model_json_path(directory)
    if not _fs.exists(path):
        raise CheckpointNotFoundError(
            f"{path} does not exist, so the architecture is unknown. keras_ckpt writes it at "
            "the first save of a model that has get_config(); for other models build the "
            "model in code and pass it (`model=`), or use restore(model, checkpoint)."
        )
    try:
        config = json.loads(_fs.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict) or "class_name" not in config:
        raise CheckpointCorruptError(
            f"{path} is not a Keras model config (model.to_json()): it has no class_name."
        )
    return config


def _known(name: object, custom_objects: dict[str, Any]) -> bool:
    """True if `name` is a user-supplied (custom or registered) object."""
    if not isinstance(name, str) or not name:
        return False
    if name in custom_objects:
        return True
    return keras.saving.get_registered_object(name, custom_objects=custom_objects) is not None


def _keras_module(module: object) -> bool:
    return isinstance(module, str) and module.split(".", 1)[0] in _KERAS_PACKAGES


def _keras_builtin_function(name: str) -> bool:
    return any(callable(getattr(getattr(keras, m), name, None)) for m in _BUILTIN_MODULES)


class _Refused(Exception):
    """`supply`: the name to pass in `custom_objects`, when supplying it can help at all."""

    def __init__(
        self, what: str, where: str, supply: str | None = None, subclassed: bool = False
    ) -> None:
        super().__init__(what)
        self.what, self.where, self.supply, self.subclassed = what, where, supply, subclassed


def _where(trail: list[str]) -> str:
    return " > ".join(trail) or "the top level"


def _check(node: Any, custom: dict[str, Any], trail: list[str]) -> None:
    """Raises `_Refused` for the first object in `node` that could run foreign code."""
    if isinstance(node, list):
        for item in node:
            _check(item, custom, trail)
        return
    if not isinstance(node, dict):
        return
    if "class_name" not in node:
        for value in node.values():
            _check(value, custom, trail)
        return
    cls = node.get("class_name")
    inner = node.get("config")
    module = node.get("module")
    registered = node.get("registered_name")
    name = inner.get("name") if isinstance(inner, dict) else None
    here = trail + [f"{cls} {name!r}" if isinstance(name, str) else str(cls)]
    if cls == "__lambda__":
        raise _Refused("a Python lambda stored as bytecode", _where(trail))
    if cls in _PLAIN_DATA:
        return
    if cls in _CONTAINERS:
        _check(inner, custom, trail)
        return
    if isinstance(cls, str) and cls.startswith("__") and cls != "__typespec__":
        raise _Refused(f"an unknown special object {cls!r}", _where(trail))
    if cls == "function":
        if _known(inner, custom) or _known(registered, custom):
            return
        if module == "builtins" and isinstance(inner, str) and _keras_builtin_function(inner):
            return
        if _keras_module(module):
            return
        raise _Refused(
            f"an unknown function {inner!r} (module {module!r})",
            _where(trail),
            supply=inner if isinstance(inner, str) else None,
        )
    label = node.get("spec_name", cls)
    user_supplied = _known(registered, custom) or _known(cls, custom)
    if not user_supplied and not _keras_module(module):
        raise _Refused(
            f"an unknown class {label!r}" + (f" (module {module!r})" if module else ""),
            _where(here),
            supply=str(label),
            subclassed=not trail,  # the model itself: a subclassed keras.Model
        )
    if cls == "Lambda" and not user_supplied and isinstance(inner, dict):
        function = inner.get("function")
        kind = function.get("class_name") if isinstance(function, dict) else None
        if kind == "__lambda__":
            raise _Refused("a Lambda layer holding a Python lambda as bytecode", _where(here))
        if kind != "function":
            raise _Refused("a Lambda layer whose function is not a named function", _where(here))
    for key, value in node.items():
        if key not in ("class_name", "module", "registered_name"):
            _check(value, custom, here)


_ROUTES = (
    "build the model in code and call keras_ckpt.restore(model, checkpoint) (or pass it "
    "as `model=` to export_saved_model / evaluate_checkpoints); or train with "
    "`save_graph=True`, so that the directory keeps the model's graph in graph/ and "
    "load_model loads it from there with no code"
)


def _hint(refused: _Refused) -> str:
    """What the user can do about `refused`: only what would work."""
    if refused.subclassed:
        return (
            f"{refused.supply} is a subclassed model: model.json names its class but cannot "
            f"hold its code. What works: {_ROUTES}. Passing the class in `custom_objects=` "
            "works only if it rebuilds itself from its config (get_config/from_config); "
            "otherwise Keras fails to deserialize it."
        )
    if refused.supply is None:  # bytecode or an unknown special object: nothing to supply
        return (
            f"No `custom_objects=` can stand in for it. What works: {_ROUTES}. For new runs, "
            "use a named function or a custom layer registered with "
            "@keras.saving.register_keras_serializable() instead of a lambda."
        )
    name = refused.supply
    return (
        f"If the code of {name!r} is at hand and you trust it, pass it: "
        f"`custom_objects={{{name!r}: {name}}}` (or register it with "
        f"@keras.saving.register_keras_serializable()). Without its code: {_ROUTES}."
    )


def refusal(config: Any, custom_objects: dict[str, Any] | None, path: str) -> str | None:
    """Why `config` (from `path`) cannot be loaded safely, and what works; None if it can."""
    try:
        _check(config, dict(custom_objects or {}), [])
    except _Refused as refused:
        return (
            f"{path} cannot be loaded safely: it holds {refused.what} (at {refused.where}), "
            f"and keras_ckpt runs no code from a checkpoint directory. {_hint(refused)}"
        )
    return None


def build_model(
    directory: str, custom_objects: dict[str, Any] | None = None, *, compile: bool = True
) -> keras.Model:
    """Rebuilds the model of `directory` from its `model.json` (no code from the file runs).

    Args:
        directory: The checkpoint directory holding `model.json`.
        custom_objects: Classes and functions the user supplies by name.
        compile: Also compile it from the recorded compile config, if any.

    Raises:
        ValueError: the file names an object that could run code, or Keras cannot rebuild it.
    """
    path = model_json_path(directory)
    config = read_config(directory)
    compile_config = config.pop("compile_config", None)
    why = refusal(config, custom_objects, path)
    if why:
        raise ValueError(why)
    if compile and compile_config:
        why = refusal(compile_config, custom_objects, path)
        if why:
            warnings.warn(
                f"{why} (in its compile_config). The model is returned uncompiled; compile "
                "it yourself.",
                stacklevel=3,
            )
        else:
            config["compile_config"] = compile_config
    try:
        model = keras.saving.deserialize_keras_object(
            config, custom_objects=custom_objects, safe_mode=True
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        user_model = config.get("module") is None or not _keras_module(config.get("module"))
        hint = "" if user_model else "If it uses custom layers, pass them in `custom_objects=`. "
        reason = re.sub(r"\s*config=\{.*\}\.\s*", " ", str(exc), flags=re.S).strip()
        raise ValueError(
            f"{path} could not be rebuilt by Keras: {reason.rstrip('.')}. {hint}What works: "
            f"{_ROUTES}."
        ) from exc
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} describes a {type(model).__name__}, not a keras.Model.")
    return model
