"""Multi-head attention for the policies' transformers: self- or cross-attention over
`F.scaled_dot_product_attention`, with optional RMS-normalised queries and keys.

MoDE's denoiser projects queries, keys and values with one fused matrix (`fused_qkv=True`: it only
self-attends); HiMoE's blocks project queries and keys/values separately (`fused_qkv=False`), so the
same module also cross-attends to conditioning tokens. The two layouts keep their checkpoints' weight
names (`qkv` vs `q` + `kv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with an output projection; `forward(x, source, mask, causal)`."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        dropout: float = 0.0,
        qk_norm: bool = True,
        resid_dropout: float = 0.0,
        fused_qkv: bool = False,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        else:
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        head = dim // n_heads
        self.q_norm = nn.RMSNorm(head, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head, eps=1e-6) if qk_norm else nn.Identity()
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """`x` (B, T, d) queries; `source` (B, S, d) keys and values (None: self-attention on `x`);
        `mask` broadcastable to (B, heads, T, S), True = may attend; `causal`: a causal mask instead."""
        b, t, d = x.shape
        h = self.n_heads
        if self.fused_qkv:
            if source is not None:
                raise ValueError("a fused-qkv attention only self-attends")
            q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        else:
            source = x if source is None else source
            q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
            k, v = self.kv(source).view(b, source.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            self.q_norm(q),
            self.k_norm(k),
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)))
