"""Ranking model: DCN-v2 (Wang et al., WWW 2021) over user, item, categorical and dense context features.

Inputs (all per candidate): user index (row `n_users` = unknown), item index, user categorical features,
and the dense vector from `service.recommend.features.ranker_dense_features` (item content, two-tower score, item
popularity overall and recent, content affinity and embedding similarity to the user's history, history
length). Output: sigmoid of the logit, in (0, 1): a probability when trained with BCE, an ordering score
when trained listwise (the default).
"""

from __future__ import annotations

import torch
from torch import nn


class CrossLayer(nn.Module):
    """x_{l+1} = x_0 * (W x_l + b) + x_l"""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x0 * self.linear(x) + x
        return out


class DCNRanker(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        categorical_cardinalities: list[int],
        dense_dim: int,
        id_dim: int,
        categorical_dim: int,
        cross_layers: int,
        hidden_dims: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(n_users + 1, id_dim)
        self.item_embedding = nn.Embedding(n_items + 1, id_dim)  # row n_items: an item added after training
        self.categorical = nn.ModuleList(nn.Embedding(c, categorical_dim) for c in categorical_cardinalities)
        self.dense_norm = nn.BatchNorm1d(dense_dim)
        in_dim = 2 * id_dim + categorical_dim * len(categorical_cardinalities) + dense_dim
        self.cross = nn.ModuleList(CrossLayer(in_dim) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim + width, 1)

    def logits(
        self,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
        user_categorical: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        # user_idx, item_idx (B,), user_categorical (B, U), dense (B, F) -> (B,)
        parts = [self.user_embedding(user_idx), self.item_embedding(item_idx)]
        parts += [emb(user_categorical[:, j]) for j, emb in enumerate(self.categorical)]
        parts.append(self.dense_norm(dense))
        x0 = torch.cat(parts, dim=1)  # (B, in_dim)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        logits: torch.Tensor = self.head(torch.cat([x, self.deep(x0)], dim=1)).squeeze(-1)
        return logits

    def forward(
        self,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
        user_categorical: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(user_idx, item_idx, user_categorical, dense))
