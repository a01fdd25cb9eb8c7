"""Fusion weights by name or from text: the seven EmotiW 2017 submissions, ``--weights`` strings."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import ConfigError
from .core import check_weights

__all__ = ["PRESETS", "Preset", "parse_weights", "preset_weights"]


@dataclass(frozen=True)
class Preset:
    """Fusion weights of one published run, with what the run used and what it scored (percent)."""

    weights: dict[str, float]
    description: str
    val: float | None
    test: float
    test_per_class: dict[str, float] = field(default_factory=dict)


_W_BASE = {"aligned": 3.0, "global": 0.5, "nonaligned": 0.5}
_W_EXTRA = {"aligned": 3.2, "global": 0.8, "nonaligned": 0.6}

#: The seven EmotiW 2017 submissions (slides, "Our submissions"). A preset fixes the weights
#: only: the runs also differ by which trained models they fused (global ResNet101 or VGG19, the
#: aligned model trained on train or train + val, the global model trained with the extra data),
#: and a preset cannot reproduce that; the scores are the authors' with their models.
PRESETS: dict[str, Preset] = {
    "run1": Preset(dict(_W_BASE), "Aligned (3.0) + Global ResNet101 (0.5) + Non-aligned (0.5)", 82.7, 79.9,
                   {"Positive": 82.0, "Neutral": 57.6, "Negative": 76.7}),
    "run2": Preset(dict(_W_BASE), "Aligned (3.0) + Global VGG19 (0.5) + Non-aligned (0.5)", 81.7, 79.1,
                   {"Positive": 82.3, "Neutral": 57.0, "Negative": 74.7}),
    "run3": Preset(dict(_W_BASE), "Aligned (3.0, trained on train only) + Global ResNet101 (0.5) + "
                   "Non-aligned (0.5)", None, 78.9, {"Positive": 85.2, "Neutral": 63.6, "Negative": 67.6}),
    "run4": Preset(dict(_W_BASE), "Aligned (3.0, trained on train only) + Global VGG19 (0.5) + "
                   "Non-aligned (0.5)", None, 78.8, {"Positive": 85.2, "Neutral": 64.84, "Negative": 66.6}),
    "run5": Preset(dict(_W_EXTRA), "Aligned (3.2) + Global ResNet101 (0.8, extra data) + Non-aligned (0.6)",
                   83.7, 80.9, {"Positive": 83.9, "Neutral": 58.8, "Negative": 76.4}),
    "run6": Preset(dict(_W_EXTRA), "Aligned (3.2) + Global VGG19 (0.8, extra data) + Non-aligned (0.6)",
                   83.8, 79.8, {"Positive": 83.9, "Neutral": 58.2, "Negative": 74.0}),
    "run7": Preset(dict(_W_EXTRA), "Aligned (3.2, trained on train only) + Global ResNet101 (0.8, extra "
                   "data) + Non-aligned (0.6)", None, 79.1, {"Positive": 85.5, "Neutral": 59.4, "Negative": 70.0}),
}


def preset_weights(name: str, branches: Iterable[str] | None = None) -> dict[str, float]:
    """The fusion weights of one of the authors' seven submissions.

    Args:
        name: ``run1`` .. ``run7`` (also ``emotiw17-run5`` or ``5``).
        branches: the branches available; every preset branch (``aligned``, ``global``,
            ``nonaligned``) must be among them.

    Returns:
        branch -> weight.

    Raises:
        ConfigError: for an unknown preset, or a preset branch missing from ``branches``.

    >>> preset_weights("run5")
    {'aligned': 3.2, 'global': 0.8, 'nonaligned': 0.6}
    """
    key = name.strip().lower().removeprefix("emotiw17-").removeprefix("emotiw17_")
    key = f"run{key}" if key.isdigit() else key
    if key not in PRESETS:
        raise ConfigError(f"unknown fusion preset {name!r}; choose one of {', '.join(PRESETS)}")
    weights = dict(PRESETS[key].weights)
    if branches is not None:
        have = set(branches)
        missing = sorted(set(weights) - have)
        if missing:
            raise ConfigError(f"preset {name!r} weights branches {sorted(weights)}, but there is no "
                              f"{', '.join(missing)} branch (have {sorted(have)}); pass --weights instead")
    return weights


def parse_weights(text: str, branches: Iterable[str] | None = None) -> dict[str, float]:
    """Read ``--weights`` text.

    Args:
        text: ``NAME=NUMBER`` pairs separated by commas.
        branches: the known branches; another name is an error (None: any name).

    Returns:
        branch -> weight.

    Raises:
        ConfigError: for malformed text, an unknown branch, or a negative weight.

    >>> parse_weights("aligned=3, global=0.5")
    {'aligned': 3.0, 'global': 0.5}
    """
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"weights {text!r}: {part!r} is not NAME=NUMBER; "
                              "write e.g. aligned=3,global=0.5,nonaligned=0.5") from None
    if not out:
        raise ConfigError(f"weights {text!r} name no branch; write e.g. aligned=3,global=0.5,nonaligned=0.5")
    if branches is not None:
        unknown = sorted(set(out) - set(branches))
        if unknown:
            raise ConfigError(f"weights name unknown branch(es) {', '.join(unknown)}; the branches are "
                              f"{', '.join(sorted(branches))}")
    check_weights(out, out)
    return out
