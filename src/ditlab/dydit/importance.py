"""Reorder a trained DiT's heads and MLP channels by weight magnitude, most important first, without changing
what the network computes. DyDiT keeps unit 0 (head 0, MLP group 0) always on, so it must be the best one.

Importance of a head: the L2 norm of all its weights (its q, k, v rows with their biases and its proj columns).
Importance of one MLP hidden channel: the L2 norm of its fc1 row, fc1 bias and fc2 column. Channels are sorted
individually, so MLP group g is then the g-th best block of hidden_width/H channels.
Attention sums over heads and the MLP over channels, so permuting them (consistently in both layers) leaves
the output unchanged up to floating-point summation order.
"""

from __future__ import annotations

import torch


def head_importance(attn) -> torch.Tensor:
    """(H,) magnitude of each head's weights."""
    H, hd = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.detach().view(3, H, hd, -1).pow(2).sum(dim=(0, 2, 3))  # (H,)
    if attn.qkv.bias is not None:
        w = w + attn.qkv.bias.detach().view(3, H, hd).pow(2).sum(dim=(0, 2))
    w = w + attn.proj.weight.detach().view(-1, H, hd).pow(2).sum(dim=(0, 2))
    return w.sqrt()


def channel_importance(mlp) -> torch.Tensor:
    """(F,) magnitude of each hidden channel's weights."""
    w = mlp.fc1.weight.detach().pow(2).sum(1) + mlp.fc1.bias.detach().pow(2)
    return (w + mlp.fc2.weight.detach().pow(2).sum(0)).sqrt()


@torch.no_grad()
def permute_heads(attn, order: torch.Tensor) -> None:
    """Reorder the heads of an attention layer in place: new head i = old head order[i]."""
    H, hd = attn.num_heads, attn.head_dim
    attn.qkv.weight.copy_(attn.qkv.weight.view(3, H, hd, -1)[:, order].reshape_as(attn.qkv.weight))
    if attn.qkv.bias is not None:
        attn.qkv.bias.copy_(attn.qkv.bias.view(3, H, hd)[:, order].reshape(-1))
    D = attn.proj.weight.shape[0]
    attn.proj.weight.copy_(attn.proj.weight.view(D, H, hd)[:, order].reshape(D, H * hd))


@torch.no_grad()
def permute_channels(mlp, order: torch.Tensor) -> None:
    """Reorder the hidden channels of an MLP in place: new channel i = old channel order[i]."""
    mlp.fc1.weight.copy_(mlp.fc1.weight[order])
    mlp.fc1.bias.copy_(mlp.fc1.bias[order])
    mlp.fc2.weight.copy_(mlp.fc2.weight[:, order])


def reorder_by_importance(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sort every block's heads and MLP channels by decreasing importance, in place (a DiT or a DyDiT).

    Returns the (head order, channel order) applied to each block. Call it before fine-tuning: the routers of
    a DyDiT refer to units by position, so reordering a trained DyDiT would scramble them.
    """
    orders = []
    for block in model.blocks:
        heads = torch.argsort(head_importance(block.attn), descending=True, stable=True)
        channels = torch.argsort(channel_importance(block.mlp), descending=True, stable=True)
        permute_heads(block.attn, heads)
        permute_channels(block.mlp, channels)
        orders.append((heads, channels))
    return orders
