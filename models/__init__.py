"""Models of SAMSOP-Net: Ego-RNN (RGB, flow, two-stream) with the MS and OP self-supervised heads.

One concept per file, in reading order:
    backbone.py     ResNet-34 giving ImageNet logits, f_bn and f_nobn per frame
    convlstm.py     the ConvLSTM cell
    egornn.py       CAM attention + ConvLSTM over the frames (Ego-RNN RGB stream)
    ms_head.py      motion-segmentation head (SparNet)
    op_head.py      order-prediction head (OPN)
    samsop.py       SAMSOP-Net = EgoRNN + MS head + OP head
    flow.py         flow ResNet-34 (10-channel input)
    twostream.py    flow + RGB two-stream model
    stages.py       which parameters train in each stage; train/eval modes; optimizer groups
    checkpoints.py  loading this project's and the original Ego-RNN checkpoints
    speed.py        the same computations on faster kernels, installed on a model (install)
"""
from .backbone import PretrainedWeightsError, ResNet34Backbone, feature_map_size, imagenet_cache_path
from .checkpoints import CheckpointError, checkpoint_info, checkpoint_num_classes, load_checkpoint
from .convlstm import ConvLSTMCell
from .egornn import EgoRNN
from .flow import FlowResNet34
from .ms_head import MotionSegmentationHead
from .op_head import OrderPredictionHead
from .samsop import SAMSOPNet
from .stages import param_groups, set_stage, set_train_mode
from .twostream import TwoStream

__all__ = [
    "PretrainedWeightsError", "ResNet34Backbone", "feature_map_size", "imagenet_cache_path",
    "CheckpointError", "checkpoint_info", "checkpoint_num_classes", "load_checkpoint",
    "ConvLSTMCell", "EgoRNN", "FlowResNet34", "MotionSegmentationHead", "OrderPredictionHead",
    "SAMSOPNet", "TwoStream", "param_groups", "set_stage", "set_train_mode",
]
