"""Ego-RNN two-stream model, trained jointly (docs/design.md §2).

    flow stack -> FlowResNet34 -> pooled layer4 features (512)
    RGB clip   -> EgoRNN       -> pooled final ConvLSTM cell state (mem_size)
    concat -> Dropout(0.5) -> Linear(512 + mem_size, C)

Both streams start from their own best models (flow, stage-2 RGB); the per-stream classifiers
are not used. Which parameters train, and at which learning rate: models/stages.py.
"""
import torch
import torch.nn as nn


class TwoStream(nn.Module):
    def __init__(self, num_classes, flow_model, rgb_model):
        """flow_model: FlowResNet34; rgb_model: EgoRNN, or a SAMSOPNet (its .egornn is used)."""
        super().__init__()
        self.num_classes = num_classes
        self.flow_model = flow_model
        self.rgb_model = getattr(rgb_model, "egornn", rgb_model)
        self.classifier = nn.Sequential(nn.Dropout(0.5),
                                        nn.Linear(512 + self.rgb_model.mem_size, num_classes))

    def forward(self, flow, rgb):
        """flow (B, 10, H, W) or (B, S, 10, H, W); rgb (B, T, 3, H, W) -> dict(logits (B, C),
        flow_features, rgb_features, attention, cam_class)."""
        flow_features = self.flow_model(flow)["features"]
        rgb_out = self.rgb_model(rgb)
        rgb_features = rgb_out["cell_pooled"]
        logits = self.classifier(torch.cat([flow_features, rgb_features], dim=1))
        return dict(logits=logits, flow_features=flow_features, rgb_features=rgb_features,
                    attention=rgb_out["attention"], cam_class=rgb_out["cam_class"])
