"""One rule for every config dataclass: a bad value fails before any work starts, naming the key, its value and
what is allowed (`learner.lr=-1.0 is invalid: expected > 0`)."""
from __future__ import annotations


def check(section: str, cfg, rules: list[tuple[str, bool, str]]):
    """rules: (key, ok, allowed) with key a dotted path inside cfg. Raises ValueError at the first rule that fails;
    returns cfg, so a `validate` method can end with `return check(...)`."""
    for key, ok, allowed in rules:
        if not ok:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            raise ValueError(f"{section + '.' if section else ''}{key}={value!r} is invalid: expected {allowed}")
    return cfg
