"""Training configs: small YAML recipes over a base, command-line overrides, a resolved dump.

A recipe names its parent with ``base: other.yaml`` (a path relative to the recipe); parents are
merged first, children deep-merged on top, then ``key.sub=value`` overrides (values parsed as
YAML). :data:`DEFAULTS` is the schema: every key a config may set exists there, so a typo is a
:class:`~groupmood.errors.ConfigError` naming the key instead of a silently ignored option. A
default of ``{}`` is an open mapping (any keys). The ``data`` section holds the options every
dataset kind shares; each kind's own options live in its section, ``data.<kind>``
(:data:`DATA_KINDS`, checked per kind; the flat spelling ``data.mode`` is accepted too). Recipes
state only what differs from their base. The resolved config (complete: every default, the
section of its data kind) is written beside each run as ``config.yaml``, so a run can always be
reproduced from its folder alone.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import ConfigError
from .io import atomic_write

__all__ = ["DATA_KINDS", "DEFAULTS", "DataKind", "LEGACY_DATA_KEYS", "SCHEMA", "apply_overrides", "data_options", "dump_config",
           "load_config", "merge", "parse_override", "resolve_data", "validate_keys"]

#: Every known option with its default. Recipes in ``configs/`` change a few of them.
DEFAULTS: dict[str, Any] = {
    "seed": 0,                      # seeds model init, data order, augmentation, label sampling
    "device": "auto",               # auto | cpu | cuda | cuda:N
    "threads": None,                # torch.set_num_threads (None: torch's default)
    "out": None,                    # run folder (None: runs/<recipe file stem>)
    "model": {
        "name": "resnet_compact_48",  # a name from groupmood.models.list_models()
        "head": "softmax",            # softmax | lsoftmax | asoftmax
        "margin_m": 4,
        "drop_rate": 0.0,
        "kwargs": {},                 # extra constructor arguments (e.g. margin base / lambda_min, freeze_bn)
        "pretrained": None,           # global nets: imagenet | a weights name | a checkpoint file | none (random)
    },
    "init_from": None,              # checkpoint (.pt / .safetensors) to fine-tune from
    "init_exclude": [],             # fnmatch patterns of state-dict keys not to load (e.g. "head.*")
    "data": {                       # options of every data kind; each kind's own: DATA_KINDS (data.<kind>)
        "kind": "ferplus",          # ferplus | folder | named | legend | npz (see groupmood.data.faces); gaf |
                                    # image_csv | twitter_you2015 | twitter_sentibank603 | emotion6 | images
                                    # (whole-image sets, see groupmood.data.groups); group_faces: a face model
                                    # on every MTCNN face of whole-image photos, each labelled with its photo's
                                    # group class, split per photo with the global branch's split files
                                    # (val / test accuracy per face; see groupmood.data.group_faces)
        "root": None,               # dataset folder (or .npz file for kind npz)
        "target": "expressions",    # expressions (8 FERPlus classes) | valence (3 group classes)
        "surprise": "Positive",     # group class of surprise when reading expressions as valence
        "classes": None,            # expression classes to train on (None: the 8 FERPlus emotions); whole-image
                                    # data and group_faces: a subset of Negative, Neutral, Positive (None: all three)
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},  # group-disjoint split (not FERPlus)
        "split_seed": 0,
        "split_file": None,         # face data: JSON split to reuse or create (None: <run>/split.json)
        "split_dir": None,          # whole-image data and group_faces: one split JSON per source, reused
                                    # (None: <run>/splits)
        "cache": True,              # cache decoded images as .npz under groupmood.weights.home()
        "workers": 0,               # DataLoader workers (0: in the main process; arrays are in memory)
    },
    "aug": {
        "enabled": True,
        "batched": True,            # one affine per sample, applied to the whole batch (fast)
        "degrees": 20.0,            # FERPlus reference: rotation 20 degrees
        "translate": 0.08,          # shift 8 % of the size
        "scale": 1.05,              # zoom in [1/1.05, 1.05]
        "shear": 0.05,              # skew 0.05 (a shear factor, i.e. atan(0.05) degrees)
        "hflip": 0.5,
        "global_strong": False,     # global images: random resized crop (scale 0.35-1) + colour jitter
                                    # instead of the seed's random 224 crop (both flip)
    },
    "loss": {
        "class_weights": None,      # None (plain cross entropy) | balanced (n / (k * count_c) from the
                                    # training targets: every class weighs the same) | a list, one per class
        "label_smoothing": 0.0,     # cross-entropy label smoothing (hard targets)
    },
    "optim": {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5.0e-4,
        "nesterov": False,
        "head_lr_mult": 1.0,        # lr factor of the classifier head (Caffe's lr_mult on a new layer when fine-tuning)
        "trunk_lr_mult": 1.0,       # lr factor of everything but the head; 0 freezes the trunk's parameters
                                    # (the head alone trains; BatchNorm statistics follow model.kwargs.freeze_bn)
    },
    "sched": {
        "name": "step",             # step | multistep | cosine | constant
        "step_epochs": 4,           # step: lr * gamma every step_epochs epochs
        "milestones": [],           # multistep: lr * gamma at these iterations
        "gamma": 0.1,
        "warmup_iters": 0,          # linear warm-up from warmup_factor * lr (any schedule)
        "warmup_factor": 0.1,
        "min_lr": 0.0,              # cosine floor
    },
    "train": {
        "epochs": 10,
        "max_iters": None,          # stop the recipe at this many iterations (multistep recipes)
        "max_steps": None,          # stop this invocation at this global step (resume continues)
        "subset": None,             # train on this many training items only, a fixed seeded choice (an overfit
                                    # check: can the model and recipe drive the loss down at all?)
        "val_every": 1,             # validate every this many epochs and after the last (0: never; the best
                                    # checkpoint is then the one with the best training accuracy)
        "batch_size": 64,
        "eval_batch_size": 256,
        "ckpt_every": 200,          # steps between checkpoints (also one at every epoch end)
        "amp": True,                # mixed precision, CUDA only
        "channels_last": True,      # CUDA only
        "tta_flip": False,          # validation with horizontal-flip test-time augmentation
        "select_by": "accuracy",    # best.pt keeps the epoch with the best validation accuracy |
                                    # mean_class_accuracy (unbalanced validation sets, class-weighted losses)
        "batchnorm": "batch",       # under torchrun: batch (each process's own batch statistics) | sync
                                    # (SyncBatchNorm over the global batch, CUDA only) | frozen (running
                                    # statistics fixed; any number of processes trains alike); see docs/scaling.md
        "progress": True,           # tqdm bars
    },
}


_FACE_FILES = {
    "faces": "file",                # file: use each image as the face | mtcnn: our detector's crop of its largest face
    "crop": None,                   # [left, top, right, bottom] box in fractions of width / height, cut before resizing
    "group_regex": None,            # regex on the file stem whose group 1 is the subject / person
}
_SENTIMENT = {
    "valence_cut": [4.5, 5.5],      # emotion6: valence <= first is Negative, >= second Positive, else Neutral
    "test_agree": 5,                # twitter_you2015: test images only among those this many of 5 agreed on
}

class DataKind(NamedTuple):
    """A ``data.kind``: the function that builds its datasets and its own options with their defaults."""

    builder: str                    # "module:function" returning a DataBundle, imported on first use
    options: dict[str, Any]


_FACES = "groupmood.data.faces:build_face_data"
_IMAGES = "groupmood.data.groups:build_group_data"

#: The one registry of data kinds: each kind's builder (:func:`groupmood.data.build_data` calls it) and its own
#: options with their defaults, set under ``data.<kind>`` (e.g. ``data.legend.csv``). The resolved config holds
#: the section of its kind, complete; the flat spelling (``data.csv``) is accepted too (it wins over the section)
#: and an option of another kind there is ignored.
DATA_KINDS: dict[str, DataKind] = {
    "ferplus": DataKind(_FACES, {"mode": "majority"}),  # training labels: majority | probability | crossentropy
    "folder": DataKind(_FACES, dict(_FACE_FILES)),
    "named": DataKind(_FACES, {**_FACE_FILES,
                               "label_regex": None}),  # regex whose group 1 is the label in the file name
                                                       # (default: JAFFE's KA.HA2.29.jpg)
    "legend": DataKind(_FACES, {**_FACE_FILES,
                                "csv": "legend.csv",    # the label file, relative to root
                                "image_dir": "images"}),  # the image folder, relative to root
    "npz": DataKind(_FACES, {}),
    "gaf": DataKind(_IMAGES, {}),
    "image_csv": DataKind(_IMAGES, {}),
    "twitter_sentibank603": DataKind(_IMAGES, {}),
    "twitter_you2015": DataKind(_IMAGES, {"test_agree": _SENTIMENT["test_agree"]}),
    "emotion6": DataKind(_IMAGES, {"valence_cut": _SENTIMENT["valence_cut"]}),
    "images": DataKind(_IMAGES, {"sources": [],  # list of {kind, root, name, split, valence_cut, test_agree}
                                 **_SENTIMENT}),  # defaults of the sources that do not set their own
    "group_faces": DataKind("groupmood.data.group_faces:build_group_face_data", {
        "source": None,             # the photos' whole-image kind (gaf | image_csv | twitter_you2015 |
                                    # twitter_sentibank603 | emotion6, read from root), or images / None for sources
        "sources": [],              # as kind images
        **_SENTIMENT,
        "top_k_faces": None,        # keep the k largest faces (box area) of each photo (None: all)
        "grey": False,              # aligned models: grey crops over 3 channels (a model trained on grey photos,
                                    # like the shipped face_aligned: its bundle feeds it grey)
        "face_cache": None,         # face cache root (None: <GROUPMOOD_HOME>/face_cache)
        "cache_workers": 1,         # detector processes building the face cache (one thread each)
    }),
}
#: The flat spellings of the kinds' options (``data.mode``, ``data.csv``, ...), accepted in any recipe.
LEGACY_DATA_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for kind in DATA_KINDS.values() for k in kind.options))
#: What a config may name: DEFAULTS plus the kinds' sections and the flat spellings of their options.
SCHEMA: dict[str, Any] = {**DEFAULTS, "data": {**DEFAULTS["data"], **dict.fromkeys(DATA_KINDS),
                                               **dict.fromkeys(LEGACY_DATA_KEYS)}}


def resolve_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` section with its kind's options in ``data.<kind>``: checked, complete, flat keys moved in.

    Sections of other kinds are checked and dropped (a recipe may change the kind of its base).
    """
    kind = data.get("kind")
    if kind not in DATA_KINDS:
        raise ConfigError(f"unknown data.kind {kind!r}; choose one of {', '.join(DATA_KINDS)}")
    out = {k: copy.deepcopy(v) for k, v in data.items() if k in DEFAULTS["data"]}
    for name, spec in DATA_KINDS.items():
        allowed = spec.options
        section = data.get(name)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(f"config key 'data.{name}' must be a mapping of the {name} options, got {section!r}")
        unknown = sorted(set(section) - set(allowed))
        if unknown:
            known = ", ".join(f"data.{name}.{k}" for k in allowed) or "none (it has no options of its own)"
            raise ConfigError(f"unknown config key 'data.{name}.{unknown[0]}'; data kind {name} takes: {known}")
    options = copy.deepcopy(DATA_KINDS[kind].options)
    options.update(copy.deepcopy(dict(data.get(kind) or {})))
    options.update({k: copy.deepcopy(data[k]) for k in LEGACY_DATA_KEYS if k in data and k in options})
    out[kind] = options
    return out


def data_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """One flat mapping of the options a dataset reader uses: the shared ones and its kind's.

    Readers take this view (``data["mode"]``), whichever spelling the config used.
    """
    resolved = resolve_data(data)
    return {**{k: v for k, v in resolved.items() if k != resolved["kind"]}, **resolved[resolved["kind"]]}

def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, everything else in ``update`` replaces ``base``.

    Args:
        base: the mapping merged into (not changed).
        update: what changes.

    Returns:
        A new dict.

    >>> merge({"train": {"epochs": 10, "lr": 0.1}}, {"train": {"epochs": 3}})
    {'train': {'epochs': 3, 'lr': 0.1}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any] | None = None, where: str = "") -> None:
    """Raise ConfigError for the first key of ``cfg`` that ``schema`` (default :data:`SCHEMA`) does not know.

    The data kinds' sections are checked by :func:`resolve_data`.
    """
    schema = SCHEMA if schema is None else schema
    for key, value in cfg.items():
        name = f"{where}{key}"
        if key not in schema:
            known = ", ".join(f"{where}{k}" for k in schema)
            raise ConfigError(f"unknown config key {name!r}; known keys here: {known}")
        sub = schema[key]
        if isinstance(sub, Mapping) and sub:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {name!r} must be a mapping of options, got {value!r}")
            validate_keys(value, sub, f"{name}.")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options at the top level")
    return data


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged mapping of ``path`` and its ``base:`` ancestors (ancestors first)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config files name each other as base in a loop: {chain}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return merge(_load_chain(path.parent / base, (*seen, path)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Read one ``key.sub=value`` override.

    Args:
        text: the override; the value is parsed as YAML.

    Returns:
        (key parts, value).

    >>> parse_override("train.epochs=3")
    (['train', 'epochs'], 3)
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. train.epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A config with ``key.sub=value`` overrides applied.

    Args:
        cfg: the config (not changed).
        overrides: ``key.sub=value`` texts (:func:`parse_override`).

    Returns:
        A new dict.

    Raises:
        ConfigError: for a key :data:`SCHEMA` does not know.

    >>> apply_overrides({"train": {"epochs": 10}}, ["train.epochs=3"])
    {'train': {'epochs': 3}}
    """
    out = copy.deepcopy(dict(cfg))
    for text in overrides:
        parts, value = parse_override(text)
        update: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            update = {part: update}
        validate_keys(update)
        out = merge(out, update) if isinstance(value, Mapping) else _set(out, parts, value)
    return out


def _set(cfg: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resolve DEFAULTS <- ``base`` <- recipe chain at ``path`` <- overrides into one plain dict.

    Args:
        path: a YAML recipe (its ``base:`` parents are merged first); None: the defaults.
        overrides: ``key.sub=value`` texts applied last.
        base: a mapping merged over the defaults before the recipe.

    Returns:
        The complete config, every default filled in.

    >>> cfg = load_config(overrides=["train.epochs=3"])
    >>> cfg["train"]["epochs"], cfg["data"]["kind"]
    (3, 'ferplus')
    """
    cfg = copy.deepcopy(DEFAULTS)
    if base is not None:
        validate_keys(base)
        cfg = merge(cfg, base)
    if path is not None:
        recipe = _load_chain(Path(path))
        validate_keys(recipe)
        cfg = merge(cfg, recipe)
    cfg = apply_overrides(cfg, overrides)
    cfg["data"] = resolve_data(cfg["data"])
    return cfg


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write a config as YAML, atomically.

    Args:
        cfg: the config.
        path: the output file.

    Returns:
        The path written.
    """
    with atomic_write(path) as fh:
        yaml.safe_dump(dict(cfg), fh, sort_keys=False, default_flow_style=None)
    return Path(path)


def overfit_check(cfg: Mapping[str, Any], items: int, steps: int = 300) -> dict[str, Any]:
    """``cfg`` made into an overfit check: can the model and the loss drive the training loss to near zero?

    It trains on ``items`` fixed training items (``train.subset``) for about ``steps`` steps, with what
    keeps a recipe from memorising them turned off: augmentation, dropout, label smoothing, weight decay,
    the warm-up and the learning-rate decay; the batch is at most ``items`` and nothing is validated. A
    recipe that cannot reach a small loss here has a bug (labels, loss, learning rate) before it has a
    data problem. FERPlus's soft targets (vote distributions) cannot reach zero loss, their entropy is
    the floor, so the check trains on each face's majority label.
    """
    if isinstance(items, bool) or not isinstance(items, int) or items < 1:
        raise ConfigError(f"the overfit check takes a whole number of training items >= 1, got {items!r}")
    out = copy.deepcopy(dict(cfg))
    batch = min(int(out["train"]["batch_size"]), items)
    out["train"].update(subset=items, val_every=0, batch_size=batch, max_iters=None, max_steps=None,
                        epochs=-(-steps // (items // batch)))
    out["aug"]["enabled"] = False
    out["model"]["drop_rate"] = 0.0
    out["loss"].update(label_smoothing=0.0)
    out["optim"]["weight_decay"] = 0.0
    out["sched"].update(name="constant", warmup_iters=0)
    if out["data"].get("kind") == "ferplus":
        out["data"].pop("mode", None)
        out["data"]["ferplus"] = {**(out["data"].get("ferplus") or {}), "mode": "majority"}
    return out
