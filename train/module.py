"""The trainable unit: ``GleeModel`` + DN query preparation + the criterion, as one ``nn.Module`` whose
``forward(batch)`` returns the weighted total loss and every term (what DeepSpeed or the plain loop wraps).

Category batches of a ``clip_teacher`` model also run the frozen teacher CLIP on the same names and add the
distillation loss (MSE over valid tokens of the 512-d ``last_hidden_state``); the student's hidden states are
computed once and reused for the class embeddings and early-fusion tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glee.modeling.glee_model import CategoryEmbeddings, GleeModel
from glee.modeling.text_encoder import masked_mean
from train.batching import TrainBatch
from train.denoising import prepare_denoising
from train.losses import LossConfig, SetCriterion, distillation_loss


@dataclass
class DenoisingConfig:
    enabled: bool = True  # MODEL.MaskDINO.DN == "standard"
    dn_num: int = 100
    noise_scale: float = 0.4


class GleeTrainModule(nn.Module):
    def __init__(self, model: GleeModel, loss: LossConfig | None = None, dn: DenoisingConfig | None = None) -> None:
        super().__init__()
        # training computes the official (reference) way: the fast inference kernels have no autograd path
        model.set_inference_mode("reference")
        self.model = model
        self.criterion = SetCriterion(loss)
        self.dn = dn or DenoisingConfig(enabled=model.cfg.dn == "standard", dn_num=model.cfg.dn_num,
                                        noise_scale=model.cfg.dn_noise_scale)
        arch = model.cfg.text.arch
        self.distill = arch == "clip_teacher" and hasattr(model, "text_encoder_teacher")

    def encode_categories(self, names: list[str]) -> tuple[CategoryEmbeddings, Tensor]:
        """Student category embeddings (as ``GleeModel.encode_categories``) and the distillation loss."""
        model = self.model
        ids, mask = model.tokenizer(names, pad_to_max_length=model.cfg.text.pad_to_max_length)
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = model.text_encoder(ids, mask)
        tokens = hidden @ model.lang_projection
        if self.distill:
            with torch.no_grad():
                teacher = model.text_encoder_teacher(ids, mask)
            dist = distillation_loss(hidden, teacher, mask)
        else:
            dist = tokens.sum() * 0.0
        emb = CategoryEmbeddings(
            names=list(names), class_embeddings=masked_mean(tokens, mask),
            fusion_tokens=tokens.flatten(0, 1)[mask.flatten() > 0], input_ids=ids, attention_mask=mask,
        )
        return emb, dist

    def forward(self, batch: TrainBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """-> (weighted total loss, weighted loss terms by official name)."""
        model = self.model
        device = model.device
        dtype = model.lang_projection.dtype
        images = batch.images.to(device=device, dtype=dtype)
        targets = [
            {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in batch.targets
        ]
        # text prompt
        categories = expressions = None
        if batch.vocabulary is not None:
            categories, dist = self.encode_categories(batch.vocabulary)
        else:
            expressions = batch.expressions
            dist = model.lang_projection.sum() * 0.0
        # denoising queries
        dn = dn_meta = None
        if self.dn.enabled:
            table, _ = model.predictor.label_encoder(batch.dn_task)
            prepared = prepare_denoising(
                targets, table, batch.dn_classes, model.cfg.num_queries, self.dn.dn_num, self.dn.noise_scale
            )
            if prepared is not None:
                dn, dn_meta = prepared
        prompt_masks = batch.visual_prompt_masks
        output = model(
            images,
            categories=categories,
            expressions=expressions,
            visual_prompt_masks=None if prompt_masks is None else prompt_masks.to(device),
            visual_prompt_type=batch.visual_prompt_type,
            denoising=dn,
            all_layer_masks=True,
        )
        losses = self.criterion(
            output, targets, batch.task, visual_prompt=prompt_masks is not None, dn_meta=dn_meta,
            clip_length=batch.clip_length, rng=random.Random(f"track/{batch.step}"),
        )
        losses["dist_loss"] = dist
        return self.criterion.weighted_total(losses, batch.task)
