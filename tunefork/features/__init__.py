"""Feature types: one module each, looked up by the config's `type`. `pipeline` fits and transforms whole tables."""

from tunefork.features import binary, category, number, text

INPUTS = {"text": text, "category": category, "number": number, "binary": binary}
OUTPUTS = {"category": category, "binary": binary, "number": number}
