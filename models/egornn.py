"""Ego-RNN RGB stream: ResNet-34 + CAM spatial attention + ConvLSTM (docs/design.md §1).

Per frame t of a clip:
    logits_t, f_bn_t, f_nobn_t = ResNet-34(frame_t)
    c_t   = argmax(logits_t)                               top-1 ImageNet class
    cam_t = w_c . f_bn_t   at every position               w_c = row c of the ResNet fc weight
    a_t   = softmax over the h*w positions of cam_t
    x_t   = f_nobn_t * a_t                                  attended features
Then the ConvLSTM runs over x_1..x_T, and the classifier reads its final cell state:
    logits = Linear(Dropout_0.7(avgpool(c_T)))
Without attention (the "ConvLSTM" row of the paper's Table 1) x_t = f_bn_t.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import ResNet34Backbone
from .convlstm import ConvLSTMCell


def cam_attention(imagenet_logits, f_bn, fc_weight):
    """Spatial attention from the class activation map of the top-1 ImageNet class.

    imagenet_logits (N, 1000), f_bn (N, 512, h, w), fc_weight (1000, 512)
    -> attention (N, h, w) summing to 1 over positions, cam_class (N,).

    All in float32, under bf16 autocast too: the class choice and the map are cheap, and in
    bf16 near-tied top-1 classes would flip and give the frame another class's map."""
    cam_class = imagenet_logits.float().argmax(dim=1)
    with torch.autocast(f_bn.device.type, enabled=False):
        cam = torch.einsum("nk,nkhw->nhw", fc_weight.index_select(0, cam_class).float(), f_bn.float())
    attention = F.softmax(cam.flatten(1), dim=1).view_as(cam)
    return attention, cam_class


class EgoRNN(nn.Module):
    def __init__(self, num_classes, mem_size=512, attention=True, pretrained="imagenet"):
        super().__init__()
        self.num_classes, self.mem_size, self.attention = num_classes, mem_size, attention
        self.backbone = ResNet34Backbone(pretrained)
        self.convlstm = ConvLSTMCell(512, mem_size)
        self.classifier = nn.Sequential(nn.Dropout(0.7), nn.Linear(mem_size, num_classes))

    def forward(self, x):
        """x (B, T, 3, H, W) -> dict: logits (B, C); attention (B, T, s, s) and cam_class (B, T), None
        without attention; features (B, T, 512, s, s) fed to the ConvLSTM; layer4 = f_bn (B, T, 512, s, s);
        cell_pooled (B, mem_size)."""
        B, T = x.shape[:2]
        # All B*T frames through the backbone as one batch. Frozen layers build no autograd
        # graph: their parameters have requires_grad False (models/stages.py).
        imagenet_logits, f_bn, f_nobn = self.backbone(x.flatten(0, 1))
        if self.attention:
            attention, cam_class = cam_attention(imagenet_logits, f_bn, self.backbone.fc.weight)
            features = f_nobn * attention.unsqueeze(1)
            attention, cam_class = attention.unflatten(0, (B, T)), cam_class.view(B, T)
        else:
            attention = cam_class = None
            features = f_bn
        features, f_bn = features.unflatten(0, (B, T)), f_bn.unflatten(0, (B, T))
        _, cell = self.convlstm.forward_sequence(features)
        cell_pooled = torch.flatten(F.adaptive_avg_pool2d(cell, 1), 1)
        return dict(logits=self.classifier(cell_pooled), attention=attention, cam_class=cam_class,
                    features=features, layer4=f_bn, cell_pooled=cell_pooled)
