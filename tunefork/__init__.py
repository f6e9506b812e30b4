"""tunefork: a YAML config and a table of data become a fine-tuned transformer model.

`from tunefork import Model` is lazy: importing the package loads neither torch nor transformers.
"""

__version__ = "0.1.0"
__all__ = ["Model", "__version__"]


def __getattr__(name: str):
    if name == "Model":
        from tunefork.api import Model

        return Model
    raise AttributeError(f"module 'tunefork' has no attribute {name!r}")
