"""peft's newer weight methods, one small section each, mapped key for key onto peft's own config class.

Every key below keeps peft's name (and default, unless noted), except Ludwig's `bias_type` for peft's `bias`; the
section's `to_peft` passes each field through, so a key here is exactly the peft argument of that name. None of these
methods is re-implemented: peft builds, trains, saves, loads and merges them. All merge into the base weights.
Left out: OFT's `module_dropout` (peft 0.21 builds the dropout layer and never applies it) and TinyLoRA's `init_v_bound`
(its trained vector starts at zero).

    oft        Orthogonal Finetuning (Qiu et al. 2023, https://arxiv.org/abs/2306.07280): each adapted weight is
               rotated by a trained block-diagonal orthogonal matrix, which preserves the angles between neurons.
    boft       Butterfly OFT (Liu et al. 2024, https://arxiv.org/abs/2311.06243): the orthogonal matrix is a product
               of sparse butterfly factors, so it can be dense with few parameters.
    hra        Householder Reflection Adaptation (Yuan et al. 2024, https://arxiv.org/abs/2405.17484): the rotation is
               a chain of r Householder reflections.
    vblora     VB-LoRA (Li et al. 2024, https://arxiv.org/abs/2405.15179): LoRA's factors are assembled, top-k per
               sub-vector, from one vector bank shared by every layer.
    fourierft  FourierFT (Gao et al. 2024, https://arxiv.org/abs/2405.03003): ΔW is the inverse 2-D Fourier transform
               of n_frequency trained spectral coefficients at random (seeded) locations.
    waveft     WaveFT (Bilican et al. 2025, https://arxiv.org/abs/2505.12532): ΔW is the inverse discrete wavelet
               transform of n_frequency trained coefficients at random (seeded) locations.
    tinylora   TinyLoRA: LoRA through fixed random projections of a u-dimensional trained vector (peft.TinyLoraConfig).
    ln_tuning  LayerNorm tuning (Zhao et al. 2023, https://arxiv.org/abs/2312.11420): only the normalisation layers
               train (peft keeps a trained copy of each and swaps it in).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunefork.adapters.base import AdapterSection
from tunefork.adapters.lora import TARGETS_DESCRIPTION

Bias = Literal["none", "all"]
BIAS = "Which biases train too ('all': every bias of the base model); saved with the adapter."


class PeftFields(AdapterSection):
    """A section whose every own field is the peft argument of the same name (`bias_type` → `bias`)."""

    peft_class: ClassVar[str]  # the class in `peft` that this section configures

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        import peft

        shared = set(AdapterSection.model_fields) | {"type"}
        kwargs = {("bias" if name == "bias_type" else name): getattr(self, name)
                  for name in type(self).model_fields if name not in shared and getattr(self, name) is not None}
        return getattr(peft, self.peft_class)(**kwargs, task_type=task_type)


class OFT(PeftFields):
    type: Literal["oft"]
    r: int = Field(0, ge=0, description="Number of orthogonal blocks per layer; 0: derived from oft_block_size. "
                   "Set exactly one of r and oft_block_size.")
    oft_block_size: int = Field(32, ge=0, description="Size of each orthogonal block; 0: derived from r. It must "
                                "divide the adapted layers' input size.")
    coft: bool = Field(False, description="Constrained OFT: keep the rotation within eps of the identity.")
    eps: float | None = Field(None, gt=0, description="How far the constrained rotation may move (coft only); "
                              "null: peft's 6e-5.")
    block_share: bool = Field(False, description="One orthogonal block shared by every block of a layer.")
    use_cayley_neumann: bool = Field(True, description="Approximate the Cayley transform with a Neumann series.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "OFTConfig"
    peft_type: ClassVar[str] = "OFT"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _one_of_r_and_block_size(self):
        if bool(self.r) == bool(self.oft_block_size):
            raise ValueError(f"set exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}); "
                             f"the other must be 0")
        if self.eps is not None and not self.coft:
            raise ValueError("eps bounds the constrained rotation and coft is false; set coft: true or remove eps")
        return self


class BOFT(PeftFields):
    type: Literal["boft"]
    boft_block_size: int = Field(4, ge=0, description="Size of each butterfly block; 0: derived from boft_block_num. "
                                 "Set exactly one of the two.")
    boft_block_num: int = Field(0, ge=0, description="Butterfly blocks per layer; 0: derived from boft_block_size.")
    boft_n_butterfly_factor: int = Field(1, gt=0, description="Butterfly factors multiplied together (1: plain OFT).")
    boft_dropout: float = Field(0.0, ge=0, lt=1, description="Multiplicative dropout on the butterfly blocks.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "BOFTConfig"
    peft_type: ClassVar[str] = "BOFT"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING"

    def check(self, model, where: str) -> None:
        super().check(model, where)
        import torch

        if self.boft_n_butterfly_factor > 1 and not torch.cuda.is_available():
            from tunefork.errors import ConfigError

            raise ConfigError([f"{where}.boft_n_butterfly_factor: peft builds butterfly factors above 1 with its CUDA "
                               f"extension only, and this machine has no CUDA (peft would quietly use 1); remove it"])

    @model_validator(mode="after")
    def _one_of_size_and_number(self):
        if bool(self.boft_block_size) == bool(self.boft_block_num):
            raise ValueError(f"set exactly one of boft_block_size ({self.boft_block_size}) and boft_block_num "
                             f"({self.boft_block_num}); the other must be 0")
        return self


class HRA(PeftFields):
    type: Literal["hra"]
    r: int = Field(8, gt=0, description="Householder reflections per layer (even, with init_weights).")
    apply_GS: bool = Field(False, description="Gram-Schmidt-orthogonalise the reflection vectors.")
    init_weights: bool = Field(True, description="Start at the base model (pairs of equal reflections cancel).")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "HRAConfig"
    peft_type: ClassVar[str] = "HRA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _even_rank_to_start_at_the_base(self):
        if self.init_weights and self.r % 2:
            raise ValueError(f"r {self.r} must be even with init_weights true (reflections cancel in pairs)")
        return self


class VBLoRA(PeftFields):
    type: Literal["vblora"]
    r: int = Field(4, gt=0, description="Rank of the assembled LoRA factors.")
    num_vectors: int = Field(256, gt=0, description="Vectors in the shared bank.")
    vector_length: int = Field(256, gt=0, description="Length of each bank vector; it must divide the adapted "
                               "layers' input and output sizes.")
    topk: int = Field(2, gt=0, description="Bank vectors mixed into each sub-vector.")
    save_only_topk_weights: bool = Field(False, description="Save only the top-k logits (smaller; the adapter can "
                                         "then be used but not trained further).")
    vblora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the input of the adapted branch.")
    init_vector_bank_bound: float = Field(0.02, gt=0, description="Bank initialised uniformly in ±this.")
    init_logits_std: float = Field(0.1, gt=0, description="Standard deviation of the initial selection logits.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "VBLoRAConfig"
    peft_type: ClassVar[str] = "VBLORA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _topk_within_bank(self):
        if self.topk > self.num_vectors:
            raise ValueError(f"topk ({self.topk}) exceeds num_vectors ({self.num_vectors})")
        return self


class FourierFT(PeftFields):
    type: Literal["fourierft"]
    n_frequency: int = Field(1000, gt=0, description="Trained spectral coefficients per layer (at most in × out).")
    scaling: float = Field(150.0, gt=0, description="Scale of the update (like LoRA's α).")
    random_loc_seed: int = Field(777, ge=0, description="Seed of the coefficients' locations in the spectrum.")
    init_weights: bool = Field(False, description="Start the coefficients at zero (the base model); false: random, "
                               "peft's default.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "FourierFTConfig"
    peft_type: ClassVar[str] = "FOURIERFT"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING"


class WaveFT(PeftFields):
    type: Literal["waveft"]
    n_frequency: int = Field(2592, gt=0, description="Trained wavelet coefficients per layer (at most in × out).")
    scaling: float = Field(25.0, gt=0, description="Scale of the update.")
    wavelet_family: str = Field("db1", description="The wavelet (PyWavelets' names, e.g. db1, sym2).")
    use_idwt: bool = Field(True, description="Build ΔW with the inverse wavelet transform; false: place the "
                           "coefficients directly.")
    random_loc_seed: int = Field(777, ge=0, description="Seed of the coefficients' locations.")
    init_weights: bool = Field(True, description="Start the coefficients at zero (the base model).")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "WaveFTConfig"
    peft_type: ClassVar[str] = "WAVEFT"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_WAVEFT_TARGET_MODULES_MAPPING"


class TinyLora(PeftFields):
    type: Literal["tinylora"]
    r: int = Field(2, gt=0, description="Rank of the fixed projections.")
    u: int = Field(64, gt=0, description="Size of the trained vector each layer's update is projected from.")
    weight_tying: float = Field(0.0, ge=0, le=1, description="Share of layers that share one trained vector.")
    projection_seed: int = Field(42, ge=0, description="Seed of the fixed random projections.")
    tinylora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the input of the adapted branch.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Bias = Field("none", description=BIAS)

    peft_class: ClassVar[str] = "TinyLoraConfig"
    peft_type: ClassVar[str] = "TINYLORA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_TINYLORA_TARGET_MODULES_MAPPING"


class LNTuning(PeftFields):
    type: Literal["ln_tuning"]
    target_modules: list[str] | None = Field(
        None, min_length=1, description="The normalisation layers to train, e.g. [LayerNorm] for BERT. null: peft's "
        "default for the architecture.")

    peft_class: ClassVar[str] = "LNTuningConfig"
    peft_type: ClassVar[str] = "LN_TUNING"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING"


SECTIONS = (OFT, BOFT, HRA, VBLoRA, FourierFT, WaveFT, TinyLora, LNTuning)
