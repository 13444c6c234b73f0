"""The SSAMBA encoder: Vision Mamba layers used in forward/flipped pairs, then norm_f twice."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ssamba.models.config import ModelConfig
from ssamba.models.layers import DropPath, make_norm
from ssamba.models.mamba import BiMambaMixer, MambaBlock, init_mamba_branch


class MambaEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bidirectional = cfg.bidirectional
        # Vim's schedule: layer 0 gets no drop path, layer i gets rate * (i - 1) / (depth - 1).
        rates = [0.0] + torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.layers = nn.ModuleList(
            MambaBlock(
                cfg.embed_dim,
                BiMambaMixer(
                    cfg.embed_dim,
                    d_state=cfg.d_state,
                    d_conv=cfg.d_conv,
                    expand=cfg.expand,
                    dt_rank=cfg.dt_rank,
                    bidirectional=cfg.bidirectional,
                ),
                norm=cfg.norm,
                drop_path=rates[i],
                fp32=cfg.residual_in_fp32,
            )
            for i in range(cfg.depth)
        )
        self.drop_path = DropPath(cfg.drop_path)
        self.norm_f = make_norm(cfg.norm, cfg.embed_dim, eps=1e-5)
        self.reset_parameters(cfg.depth)

    def reset_parameters(self, depth: int) -> None:
        for layer in self.layers:
            mixer = layer.mixer
            nn.init.kaiming_uniform_(mixer.in_proj.weight, a=math.sqrt(5))
            for branch in (mixer.forward_branch, mixer.backward_branch):
                if branch is not None:
                    init_mamba_branch(branch)
            # mamba_ssm's prenorm-residual rescaling: out_proj / sqrt(n_layer).
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(depth)

    def forward(self, tokens: torch.Tensor, return_layers: bool = False):
        """tokens (B, L, E) -> normalised (B, L, E) [, per-pair (or per-layer) streams]."""
        if self.bidirectional and not self.training and not torch.is_grad_enabled():
            return self._infer(tokens, return_layers)
        hidden, residual = tokens, None
        streams = []
        if self.bidirectional:
            for k in range(len(self.layers) // 2):
                # layer 2k+1 runs on the time-reversed streams and its outputs are reversed back;
                # ``mirrored`` does exactly that without copies (tests/test_mamba_fast.py).
                h_f, r_f = self.layers[2 * k](hidden, residual)
                h_b, r_b = self.layers[2 * k + 1](hidden, residual, mirrored=True)
                hidden, residual = h_f + h_b, r_f + r_b
                if return_layers:
                    streams.append(residual + hidden)
        else:
            for layer in self.layers:
                hidden, residual = layer(hidden, residual)
                if return_layers:
                    streams.append(residual + hidden)
        residual = residual + self.drop_path(hidden)
        out = self.norm_f(residual.to(self.norm_f.weight.dtype))
        # The official AMBAModel applies norm_f a second time; the trained weights expect it.
        out = self.norm_f(out)
        return (out, streams) if return_layers else out

    def _infer(self, tokens: torch.Tensor, return_layers: bool):
        """:meth:`forward` in eval mode without autograd, holding as few (B, L, E) streams as it
        can: both layers of a pair see the same residual r = residual + hidden (drop path is
        the identity in eval), so it is formed once, in place, each mixer adds its output into
        one buffer (normalising r piece by piece) and the pair's new residual, r_f + r_b, is
        2 r, in place too. Only ``tokens`` is never written to."""
        hidden, residual = tokens, None
        streams = []
        for k in range(len(self.layers) // 2):
            first, second = self.layers[2 * k], self.layers[2 * k + 1]
            residual = hidden if residual is None else residual.add_(hidden)
            hidden = None  # the old stream goes before the mixers write the new one
            hidden = first.mix_into(residual)
            second.mix_into(residual, hidden, mirrored=True)
            if first.residual_in_fp32:
                residual = residual.float()  # a copy only while it is still ``tokens``
            residual = residual * 2 if k == 0 else residual.mul_(2)
            if return_layers:
                streams.append(residual + hidden)
        residual = residual.add_(hidden)
        hidden = None
        out = self.norm_f(residual.to(self.norm_f.weight.dtype))
        residual = None
        out = self.norm_f(out)  # applied twice, as in :meth:`forward`
        return (out, streams) if return_layers else out

    def reference_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The official loop, kept as the reference the fast path is tested against: flipped
        copies for the second layer of each pair and the plain mixer (``reference_forward``)."""
        if not self.bidirectional:
            raise ValueError("reference_forward covers the bidirectional (paired) encoder")

        def run(layer, h, r):
            r = h if r is None else r + layer.drop_path(h)
            return layer.mixer.reference_forward(layer.norm(r)), r

        hidden, residual = tokens, None
        for k in range(len(self.layers) // 2):
            h_f, r_f = run(self.layers[2 * k], hidden, residual)
            flipped = None if residual is None else residual.flip(1)
            h_b, r_b = run(self.layers[2 * k + 1], hidden.flip(1), flipped)
            hidden, residual = h_f + h_b.flip(1), r_f + r_b.flip(1)
        out = self.norm_f(residual + self.drop_path(hidden))
        return self.norm_f(out)
