"""The native MLP-Mixer (paper section 2, Figure 1; the official code, docs/paper-notes.md §1).

Follows `vit_jax/models_mixer.py` exactly: a per-patch linear stem, then blocks of
pre-LayerNorm (eps 1e-6) token-mixing and channel-mixing MLPs with residuals, GELU (tanh
approximation by default, as Flax's `nn.gelu`; `gelu="exact"` matches timm), no position
embedding, a final LayerNorm, global average pooling over tokens and a zero-initialised head.
Kernels are lecun-normal and biases zero (Flax defaults). Stochastic depth rises linearly from 0
at the first block to `drop_path` at the last (paper Appendix B).

Parameter names are timm's `MlpMixer` names (`stem.proj`, `blocks.N.norm1`,
`blocks.N.mlp_tokens.fc1/fc2`, `blocks.N.norm2`, `blocks.N.mlp_channels.fc1/fc2`, `norm`,
`head`), so a timm state dict loads with `strict=True`.

Written by hand rather than taken from timm for two reasons: the official GELU and init, and
the linear stochastic-depth rule (timm applies a constant rate). Token mixing uses timm's
layout, a transpose of the (B, S, C) activations and `F.linear` along the tokens: measured
faster on the CPU than multiplying the weight from the left without the transpose (a batched
matmul with a broadcast weight), eager and compiled (README's performance section).
On a CPU the tanh GELU is computed the fastest way measured, each giving torch's kernel's
values (`TanhGELU`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lecun_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Flax's lecun_normal: truncated normal (+-2 std) with variance 1/fan_in.

    The 0.8796... factor is the std of a unit normal truncated at +-2, as in Flax's
    `variance_scaling(1.0, "fan_in", "truncated_normal")`.
    """
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


# tanh-approximate GELU (Hendrycks & Gimpel 2016; Flax's nn.gelu default):
# 0.5 x (1 + tanh(k (x + c x^3))), k = sqrt(2 / pi), c = 0.044715.
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class TanhGELU(nn.GELU):
    """The tanh GELU, computed the fastest way we measured on a CPU; every way gives torch's
    kernel's values (`F.gelu(x, approximate="tanh")`):

    - compiled (torch.compile): x * sigmoid(2k (x + c x^3)), the same function
      (0.5 (1 + tanh u) = sigmoid(2u)), agreeing with a float64 reference to ~5e-7 in fp32 as
      the kernel does. Inductor's CPU code computes tanh several times slower than exp: on
      the 2-core AVX-512 CPU this project is benched on, a compiled tanh GELU over S/16's
      (8, 196, 2048) activations took 8.4 ms in bf16 and 8.0 ms in fp32, the sigmoid form 2.6
      and 1.9 ms (timm's exact GELU 2.9 and 2.5 ms), forward and backward alike.
    - eager, bf16: the kernel's own output for each of the 65,536 bf16 values, looked up
      (`_Bf16TableGELU`): bit for bit the kernel's result, 2.3-2.8 ms on those activations
      against the kernel's 5-9 ms (exact GELU 1-1.6 ms); the backward pass is the kernel's.
    - eager, fp32 and anything else: the kernel. Torch ops composed in eager mode (the sigmoid
      form, the tanh form, in cache-sized chunks) take one pass over memory each and were no
      faster than it (README's performance section).

    Written by hand because torch's CPU kernel for the tanh GELU is 3-5x slower than its exact
    GELU, the only difference between the native Mixer and timm's `MlpMixer`."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            if _compiling():
                return x * torch.sigmoid(x * (2 * _GELU_K + (2 * _GELU_K * _GELU_C) * x * x))
            if x.dtype == torch.bfloat16:
                return _Bf16TableGELU.apply(x)
        return super().forward(x)


def _compiling() -> bool:
    """Whether torch.compile is tracing this call (torch >= 2.3 says; older torch: eager path)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


_BF16_TABLE: list[torch.Tensor] = []  # built once: the kernel's tanh GELU of every bf16 value


class _Bf16TableGELU(torch.autograd.Function):
    """tanh GELU of a CPU bf16 tensor by table: a bf16 number is 16 bits, so torch's kernel is
    run once on all 65,536 of them and each element's bits index its result (bit-identical to
    the kernel, elementwise; NaN and infinities included). Backward: torch's kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        if not _BF16_TABLE:
            every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
            _BF16_TABLE.append(torch.nn.functional.gelu(every, approximate="tanh"))
        ctx.save_for_backward(x)
        # the bits as an index 0..65535 (int16 reads them signed, the mask makes them unsigned)
        idx = x.view(torch.int16).to(torch.int32, memory_format=torch.contiguous_format)
        return _BF16_TABLE[0].index_select(0, idx.bitwise_and_(0xFFFF).view(-1)).view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


class Mlp(nn.Module):
    """Dense -> GELU -> Dense, with biases (`MlpBlock` in the official code)."""

    def __init__(self, dim: int, hidden: int, gelu: str = "tanh", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = TanhGELU() if gelu == "tanh" else nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def drop_path_layer(rate: float) -> nn.Module:
    """timm's DropPath at `rate`, or nn.Identity at 0, as timm's own Mixer blocks do. timm is
    imported here, not at the top, so that a run without stochastic depth never imports it:
    its model registry and torchvision cost a tiny run's process 0.8 of its 4.0 CPU-seconds."""
    if rate <= 0:
        return nn.Identity()
    from timm.layers import DropPath

    return DropPath(rate)


class MixerBlock(nn.Module):
    """Pre-LN token mixing, then pre-LN channel mixing, each with a residual (paper eq. 1)."""

    def __init__(self, dim: int, seq_len: int, tokens_dim: int, channels_dim: int,
                 gelu: str = "tanh", dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_dim, gelu, dropout)
        self.drop_path = drop_path_layer(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_dim, gelu, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C)
        # token mixing along S: (B, S, C) -> (B, C, S), the MLP, and back (timm's layout)
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class Stem(nn.Module):
    """Per-patch fully connected layer: a P x P convolution with stride P (official `stem`)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, S, C)
        return self.proj(x).flatten(2).transpose(1, 2)  # raster (row-major) token order


class Mixer(nn.Module):
    """MLP-Mixer with the paper's Table 1 shapes by default (D_S = C/2, D_C = 4C).

    Args:
        img_size: square input side in pixels; must be a multiple of `patch_size`.
        patch_size: P, the side of the non-overlapping patches.
        num_classes: head outputs; 0 gives an identity head (features only).
        dim: hidden size C.  depth: number of Mixer blocks.
        tokens_dim / channels_dim: MLP widths D_S and D_C (default C/2 and 4C, paper Table 1).
        gelu: "tanh" (official Flax code) or "exact" (timm).
        drop_path: stochastic depth at the last block; block i uses drop_path * i / (depth - 1).
        dropout: dropout inside the MLPs (0.0 in every final setting of paper Table 4).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_classes: int = 1000,
                 dim: int = 768, depth: int = 12, tokens_dim: int | None = None,
                 channels_dim: int | None = None, in_chans: int = 3, gelu: str = "tanh",
                 drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {img_size}")
        if gelu not in ("tanh", "exact"):
            raise ValueError(f"gelu must be 'tanh' or 'exact', not {gelu!r}")
        self.img_size, self.patch_size, self.gelu = img_size, patch_size, gelu
        self.drop_path, self.dropout = drop_path, dropout
        self.num_classes, self.num_features, self.embed_dim = num_classes, dim, dim
        self.seq_len = (img_size // patch_size) ** 2
        self.tokens_dim = tokens_dim or dim // 2
        self.channels_dim = channels_dim or dim * 4
        self.stem = Stem(patch_size, dim, in_chans)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[
            MixerBlock(dim, self.seq_len, self.tokens_dim, self.channels_dim, gelu, dropout, r)
            for r in rates
        ])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """lecun-normal kernels, zero biases, unit LayerNorm scales, zero head (docs/paper-notes.md §1)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                lecun_normal_(m.weight, fan_in)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh zero-initialised head (the fine-tuning rule, docs/paper-notes.md §3)."""
        self.num_classes = num_classes
        dev = self.norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=dev) if num_classes else nn.Identity()
        if num_classes:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, S, C)
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(
                f"this Mixer takes {self.img_size}x{self.img_size} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}")
        return self.norm(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)  # global average pooling over tokens -> (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def config(self) -> dict:
        """Constructor arguments that rebuild this model, regularisers included (a resized
        copy must train with the same stochastic depth and dropout as the model it came from)."""
        return dict(img_size=self.img_size, patch_size=self.patch_size,
                    num_classes=self.num_classes, dim=self.embed_dim, depth=len(self.blocks),
                    tokens_dim=self.tokens_dim, channels_dim=self.channels_dim, gelu=self.gelu,
                    drop_path=self.drop_path, dropout=self.dropout)


__all__ = ["Mixer", "MixerBlock", "Mlp", "Stem", "TanhGELU", "lecun_normal_"]
