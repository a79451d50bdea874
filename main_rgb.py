"""Ego-RNN RGB stream (Sudhakaran & Lanz 2018): ResNet-34 + CAM spatial attention + ConvLSTM.

Stage 1 trains the ConvLSTM and the classifier on frozen ImageNet features; stage 2 starts from
the best stage-1 model and also trains layer4's convolutions and the ResNet fc (which drives the
CAM). `--noAttention` gives the plain ConvLSTM row of Table 1.

    python main_rgb.py --datasetDir DIR                 # stage 1, then stage 2
    python main_rgb.py --datasetDir DIR --stage 2 --lr 1e-4 --seqLen 16
"""
from utils.experiment import main

if __name__ == "__main__":
    main("rgb", description=__doc__)
