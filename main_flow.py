"""Warp-flow ResNet-34 (Ego-RNN's temporal stream): 5 stacked (x, y) flow frames, 10 channels.

One stage: SGD, lr 1e-2, 750 epochs. Training takes one stack at a random start, testing the
centre stack.

    python main_flow.py --datasetDir DIR
"""
from utils.experiment import main

if __name__ == "__main__":
    main("flow", description=__doc__)
