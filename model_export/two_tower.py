"""Two-tower retrieval model.

UserTower: user id (row `n_users` is the unknown user) + mean-pooled recent history + categorical user
features -> MLP -> L2-normalised embedding. ItemTower: item id + dense content features -> MLP -> L2-normalised
embedding. The score is their inner product (cosine), which is what the FAISS inner-product index serves.

`RetrievalTask` (model + loss) is separate from the towers so export needs no loss code: in-batch sampled
softmax with temperature, logQ correction of the in-batch sampling bias (Yi et al., RecSys 2019), and
masking of in-batch duplicates of the positive item; optionally content distillation: each positive's
content-only embedding (unknown-item row) pulled toward its full one, for items added after training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, out_dim))


class UserTower(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        categorical_cardinalities: list[int],
        id_dim: int,
        categorical_dim: int,
        hidden_dim: int,
        embedding_dim: int,
        history_length: int,
    ) -> None:
        super().__init__()
        self.unknown_user = n_users
        self.embedding_dim = embedding_dim
        self.history_length = history_length
        self.user_embedding = nn.Embedding(n_users + 1, id_dim)
        self.history_embedding = nn.Embedding(n_items, id_dim)
        self.categorical = nn.ModuleList(nn.Embedding(c, categorical_dim) for c in categorical_cardinalities)
        in_dim = 2 * id_dim + categorical_dim * len(categorical_cardinalities)
        self.mlp = _mlp(in_dim, hidden_dim, embedding_dim)

    def forward(self, user_idx: torch.Tensor, history: torch.Tensor, user_categorical: torch.Tensor) -> torch.Tensor:
        # user_idx (B,), history (B, L) with -1 padding, user_categorical (B, U) -> (B, E)
        if torch.onnx.is_in_onnx_export():  # the graph served: plain gathers, which every ONNX runtime runs fast
            mask = (history >= 0).unsqueeze(-1).float()  # (B, L, 1)
            hist = self.history_embedding(history.clamp(min=0)) * mask  # (B, L, id_dim)
            pooled = hist.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, id_dim)
        else:  # the same mean in one fused bag: no (B, L, id_dim) tensor, forward or backward (training's cost)
            valid = history >= 0
            summed = F.embedding_bag(
                history.clamp(min=0),
                self.history_embedding.weight,
                mode="sum",
                per_sample_weights=valid.float(),
                sparse=self.history_embedding.sparse,
            )
            pooled = summed / valid.sum(dim=1, keepdim=True).clamp(min=1)
        parts = [self.user_embedding(user_idx), pooled]
        parts += [emb(user_categorical[:, j]) for j, emb in enumerate(self.categorical)]
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class ItemTower(nn.Module):
    """Row `n_items` of the id embedding is the unknown item (learnt by item-id dropout): an item added after
    training is embedded from its content (dense features and text) alone."""

    def __init__(
        self, n_items: int, dense_dim: int, id_dim: int, hidden_dim: int, embedding_dim: int, text_dim: int = 0
    ) -> None:
        super().__init__()
        self.unknown_item = n_items
        self.item_embedding = nn.Embedding(n_items + 1, id_dim)
        self.dense = nn.Linear(dense_dim, id_dim) if dense_dim else None
        self.text = nn.Linear(text_dim, id_dim) if text_dim else None
        self.mlp = _mlp(id_dim * (1 + bool(dense_dim) + bool(text_dim)), hidden_dim, embedding_dim)

    def forward(
        self, item_idx: torch.Tensor, item_dense: torch.Tensor, item_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        # item_idx (B,), item_dense (B, D), item_text (B, T) -> (B, E)
        parts = [self.item_embedding(item_idx)]
        if self.dense is not None:
            parts.append(self.dense(item_dense))
        if self.text is not None:
            assert item_text is not None, "this item tower takes text features"
            parts.append(self.text(item_text))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class RetrievalTask(nn.Module):
    """The two towers plus the training loss."""

    item_log_probability: torch.Tensor

    def __init__(
        self,
        user_tower: UserTower,
        item_tower: ItemTower,
        item_log_probability: torch.Tensor,
        temperature: float,
        logq_correction: bool,
        user_id_dropout: float,
        item_id_dropout: float = 0.0,
        content_distillation: float = 0.0,
    ) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.register_buffer("item_log_probability", item_log_probability)  # (I,) log sampling probability
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.user_id_dropout = user_id_dropout
        self.item_id_dropout = item_id_dropout
        self.content_distillation = content_distillation
        self.gather_negatives = False  # set while training in a process group (model_export.distributed)

    def forward(
        self,
        user_idx: torch.Tensor,
        history: torch.Tensor,
        user_categorical: torch.Tensor,
        item_idx: torch.Tensor,
        item_dense: torch.Tensor,
        item_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.training and self.user_id_dropout > 0:
            drop = torch.rand(user_idx.shape, device=user_idx.device) < self.user_id_dropout
            user_idx = torch.where(drop, torch.full_like(user_idx, self.user_tower.unknown_user), user_idx)
        users = self.user_tower(user_idx, history, user_categorical)  # (B, E)
        dropped: torch.Tensor | None = None
        if self.training and self.item_id_dropout > 0:
            dropped = torch.rand(item_idx.shape, device=item_idx.device) < self.item_id_dropout
        distil = self.training and self.content_distillation > 0
        if dropped is None and not distil:
            items = self.item_tower(item_idx, item_dense, item_text)  # (B, E)
        else:
            # Each positive embedded twice in one pass: by its id (`full`) and by its content alone (the
            # unknown-item row, `content`). An id dropped out is the content embedding; the distillation term
            # pulls the content embedding toward the full one (held fixed).
            unknown = torch.full_like(item_idx, self.item_tower.unknown_item)
            both = self.item_tower(
                torch.cat([item_idx, unknown]),
                torch.cat([item_dense, item_dense]),
                None if item_text is None else torch.cat([item_text, item_text]),
            )
            full, content = both[: len(item_idx)], both[len(item_idx) :]
            items = full if dropped is None else torch.where(dropped.unsqueeze(1), content, full)
        negatives, negative_idx, offset = self._negatives(items, item_idx)
        logits = users @ negatives.T / self.temperature  # (B, N); row b's positive is column offset + b
        if self.logq_correction:
            logits = logits - self.item_log_probability[negative_idx].unsqueeze(0)
        target = offset + torch.arange(len(item_idx), device=item_idx.device)
        duplicate = negative_idx.unsqueeze(0) == item_idx.unsqueeze(1)  # (B, N): another row's positive, same item
        duplicate[torch.arange(len(item_idx), device=item_idx.device), target] = False
        logits = logits.masked_fill(duplicate, float("-inf"))
        loss = F.cross_entropy(logits, target)
        if distil:
            # An item added live then lands where a trained item with its content would be.
            loss = loss + self.content_distillation * (1 - (content * full.detach()).sum(-1)).mean()
        return loss

    def _negatives(self, items: torch.Tensor, item_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The positives every row is scored against, their ids, and where this batch's own start among them: the
        batch itself; with `gather_negatives` (training in a process group, each rank on an equal share of a
        batch), every rank's positives in rank order: the whole batch, as one process would see it (gradients
        flow back to the rank that embedded each one)."""
        if not (self.training and self.gather_negatives):
            return items, item_idx, 0
        from model_export import distributed

        rank = distributed.current()
        assert rank is not None, "gather_negatives outside a process group"
        return distributed.gather_rows(items), distributed.gather_ids(item_idx), rank.rank * len(item_idx)
