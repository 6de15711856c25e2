"""RTDet: a real-time anchor-free one-stage detector on a timm backbone.

In the spirit of YOLOX / RTMDet / YOLOv8, written on torchvision's detection building blocks:

* body: any timm CNN with ``features_only`` (three levels, strides 8/16/32 for most families);
* neck: a path-aggregation FPN (top-down then bottom-up, conv-BN-SiLU), ``width`` channels;
* head: decoupled per level (a classification branch and a box branch, ``head_convs`` 3x3 convs each),
  one point per location, box as distances to the four sides in units of the level's stride;
* label assignment: TOOD's task-aligned assigner (align = score^alpha x IoU^beta, top-k points per
  object among the points inside it or near its centre, conflicts to the highest IoU), vectorised over
  the batch; classification: BCE against the IoU-aware aligned score; boxes: GIoU weighted by it;
* the model *is* a :class:`torchvision.models.detection.FCOS` (same ``GeneralizedRCNNTransform``, anchor
  points, ``score_thresh``/``nms_thresh``/``detections_per_img`` attributes, training/eval outputs), so every
  contract the detection task has with torchvision's detectors (postprocess, tiles, ONNX, pyfunc) holds.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias), BatchNorm, SiLU: the YOLO-family block."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class PAFPN(nn.Module):
    """A timm feature extractor under a path-aggregation FPN: ``width`` channels at each level."""

    def __init__(self, body: nn.Module, width: int):
        super().__init__()
        self.body = body
        channels = body.feature_info.channels()
        self.strides = list(body.feature_info.reduction())
        self.out_channels = width
        n = len(channels)
        self.lateral = nn.ModuleList(conv_bn(c, width, 1) for c in channels)
        self.top_down = nn.ModuleList(conv_bn(width, width) for _ in range(n - 1))
        self.down = nn.ModuleList(conv_bn(width, width, 3, 2) for _ in range(n - 1))
        self.bottom_up = nn.ModuleList(conv_bn(width, width) for _ in range(n - 1))

    def forward(self, x: Tensor) -> OrderedDict:
        feats = [lat(f) for lat, f in zip(self.lateral, self.body(x))]
        for i in range(len(feats) - 2, -1, -1):  # top-down: coarse semantics into the fine levels
            feats[i] = self.top_down[i](feats[i] + F.interpolate(feats[i + 1], size=feats[i].shape[-2:], mode="nearest"))
        for i in range(1, len(feats)):  # bottom-up: fine localisation into the coarse levels
            down = self.down[i - 1](feats[i - 1])
            feats[i] = self.bottom_up[i - 1](feats[i] + down[..., :feats[i].shape[-2], :feats[i].shape[-1]])
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


class DecoupledHead(nn.Module):
    """Per level: a classification branch and a box branch (YOLOX's decoupled head, RTMDet's widths).

    Outputs ``cls_logits`` (N, A, K) and ``bbox_regression`` (N, A, 4): non-negative distances from each
    point to the box sides, in units of the level's stride (torchvision's ``BoxLinearCoder``)."""

    def __init__(self, width: int, num_classes: int, levels: int, convs: int = 2, prior: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.cls_convs = nn.ModuleList(nn.Sequential(*[conv_bn(width, width) for _ in range(convs)]) for _ in range(levels))
        self.reg_convs = nn.ModuleList(nn.Sequential(*[conv_bn(width, width) for _ in range(convs)]) for _ in range(levels))
        self.cls_pred = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(levels))
        self.reg_pred = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in range(levels))
        for conv in self.cls_pred:  # focal-loss prior: every point starts as background with probability 1 - prior
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, -math.log((1 - prior) / prior))
        for conv in self.reg_pred:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, 0.0)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        logits, boxes = [], []
        for i, f in enumerate(features):
            n = f.shape[0]
            cls = self.cls_pred[i](self.cls_convs[i](f))
            reg = F.softplus(self.reg_pred[i](self.reg_convs[i](f)))
            logits.append(cls.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
            boxes.append(reg.permute(0, 2, 3, 1).reshape(n, -1, 4))
        return {"cls_logits": torch.cat(logits, 1), "bbox_regression": torch.cat(boxes, 1)}


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (N, M, 4) with every box of ``b`` (N, A, 4): (N, M, A)."""
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter).clamp(min=1e-9)


@torch.no_grad()
def task_aligned_assign(scores: Tensor, boxes: Tensor, points: Tensor, strides: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                        gt_valid: Tensor, topk: int = 10, alpha: float = 1.0, beta: float = 6.0, radius: float = 1.0):
    """TOOD's task-aligned assignment for a padded batch.

    ``scores`` (N, A, K) predicted probabilities, ``boxes`` (N, A, 4) predicted boxes, ``points`` (A, 2),
    ``strides`` (A,), ``gt_boxes`` (N, M, 4), ``gt_labels`` (N, M), ``gt_valid`` (N, M) (padding is False).
    Candidates of an object: points inside its box or within ``radius`` strides of its centre (so that
    objects smaller than a stride still get a point). Returns ``fg`` (N, A) bool, the matched object's
    ``index`` (N, A) and the IoU-aware target score ``target`` (N, A) (0 for background).
    """
    n, a, _ = scores.shape
    m = gt_boxes.shape[1]
    px, py = points[:, 0], points[:, 1]
    x0, y0, x1, y1 = gt_boxes.unbind(-1)  # each (N, M)
    inside = (px > x0[..., None]) & (px < x1[..., None]) & (py > y0[..., None]) & (py < y1[..., None])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    near = ((px - cx[..., None]).abs() < radius * strides) & ((py - cy[..., None]).abs() < radius * strides)
    candidate = (inside | near) & gt_valid[..., None]  # (N, M, A)
    iou = _pairwise_iou(gt_boxes, boxes) * candidate
    cls_score = scores.transpose(1, 2).gather(1, gt_labels.clamp(min=0)[..., None].expand(-1, -1, a))  # (N, M, A)
    align = cls_score.pow(alpha) * iou.pow(beta) * candidate
    top = align.topk(min(topk, a), dim=-1).indices
    chosen = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    # a point chosen by several objects goes to the one it overlaps most
    multi = chosen.sum(1) > 1  # (N, A)
    best = F.one_hot(iou.argmax(1), m).transpose(1, 2).bool()  # (N, M, A)
    chosen = torch.where(multi[:, None, :], best, chosen)
    fg = chosen.any(1)
    index = chosen.float().argmax(1)
    align = align * chosen
    norm = align * (iou * chosen).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + 1e-9)
    return fg, index, norm.amax(1)


class RTDet(FCOS):
    """Anchor-free one-stage detector (see the module docstring); torchvision's FCOS interface:
    ``model(images, targets)`` returns the loss terms in training, ``model(images)`` the detections."""

    def __init__(self, body: nn.Module, num_classes: int, width: int = 64, head_convs: int = 2, topk: int = 10,
                 cls_weight: float = 0.5, box_weight: float = 7.5, **kwargs):
        neck = PAFPN(body, width)
        anchors = AnchorGenerator(tuple((s,) for s in neck.strides), ((1.0,),) * len(neck.strides))
        head = DecoupledHead(width, num_classes, len(neck.strides), head_convs)
        super().__init__(neck, num_classes, anchor_generator=anchors, head=head, **kwargs)
        self.topk, self.cls_weight, self.box_weight = topk, cls_weight, box_weight

    @staticmethod
    def _decode(codes: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from side distances (in strides) around each point; the same as ``BoxLinearCoder.decode``."""
        centers = (anchors[..., :2] + anchors[..., 2:]) / 2
        size = (anchors[..., 2:] - anchors[..., :2]).repeat(*([1] * (anchors.dim() - 1)), 2)
        scaled = codes * size
        return torch.cat([centers - scaled[..., :2], centers + scaled[..., 2:]], -1)

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     num_anchors_per_level: list[int]) -> dict[str, Tensor]:
        logits, codes = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        n, a, k = logits.shape
        grid = anchors[0]  # every image of a batch shares the padded size, hence the points
        points = (grid[:, :2] + grid[:, 2:]) / 2
        strides = grid[:, 2] - grid[:, 0]
        boxes = self._decode(codes, grid[None])
        m = max(1, max(len(t["boxes"]) for t in targets))
        gt_boxes = logits.new_zeros(n, m, 4)
        gt_labels = torch.zeros(n, m, dtype=torch.long, device=logits.device)
        gt_valid = torch.zeros(n, m, dtype=torch.bool, device=logits.device)
        for i, t in enumerate(targets):
            count = len(t["boxes"])
            gt_boxes[i, :count], gt_labels[i, :count], gt_valid[i, :count] = t["boxes"], t["labels"], True
        fg, index, score = task_aligned_assign(logits.detach().sigmoid(), boxes.detach(), points, strides, gt_boxes, gt_labels, gt_valid,
                                               topk=self.topk)
        labels = gt_labels.gather(1, index)
        target = F.one_hot(labels, k).to(logits.dtype) * (score * fg)[..., None]
        total = target.sum().clamp(min=1.0)
        cls_loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / total
        if fg.any():
            matched = gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
            weight = target.sum(-1)[fg]
            box_loss = (generalized_box_iou_loss(boxes[fg], matched[fg], reduction="none") * weight).sum() / total
        else:
            box_loss = codes.sum() * 0.0
        return {"classification": self.cls_weight * cls_loss, "bbox_regression": self.box_weight * box_loss}

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """FCOS's post-processing with the class probability as the score (no centerness branch)."""
        detections: list[dict[str, Tensor]] = []
        for index, image_shape in enumerate(image_shapes):
            image_boxes, image_scores, image_labels = [], [], []
            for logits, codes, level_anchors in zip(head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors[index]):
                logits, codes = logits[index], codes[index]
                num_classes = logits.shape[-1]
                scores = torch.sigmoid(logits).flatten()
                keep = scores > self.score_thresh
                scores = scores[keep]
                idxs = torch.where(keep)[0]
                scores, order = scores.topk(det_utils._topk_min(idxs, self.topk_candidates, 0))
                idxs = idxs[order]
                anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
                boxes = self.box_coder.decode(codes[anchor_idxs], level_anchors[anchor_idxs])
                image_boxes.append(box_ops.clip_boxes_to_image(boxes, image_shape))
                image_scores.append(scores)
                image_labels.append(idxs % num_classes)
            boxes, scores, labels = torch.cat(image_boxes), torch.cat(image_scores), torch.cat(image_labels)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections
