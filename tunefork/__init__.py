"""tunefork: a YAML config and a table of data become a fine-tuned transformer model.

`from tunefork import Model` (and `LudwigModel`, Ludwig's Python API) is lazy: importing the package loads neither
torch nor transformers.
"""

__version__ = "0.1.0"
__all__ = ["LudwigModel", "Model", "__version__"]


def __getattr__(name: str):
    if name == "Model":
        from tunefork.api import Model

        return Model
    if name == "LudwigModel":
        from tunefork.ludwig_model import LudwigModel

        return LudwigModel
    raise AttributeError(f"module 'tunefork' has no attribute {name!r}")
