"""Feature types: one module each, looked up by the config's `type`. `pipeline` fits and transforms whole tables."""

from tunefork.features import binary, category, number, text
from tunefork.features import set as set_

INPUTS = {"text": text, "category": category, "number": number, "binary": binary, "set": set_}
OUTPUTS = {"category": category, "binary": binary, "number": number, "set": set_}
