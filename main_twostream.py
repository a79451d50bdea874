"""Ego-RNN two-stream, joint training: concatenated flow and RGB features -> one classifier.

Starts from the best flow model (`--flowModel`) and the best stage-2 RGB model (`--rgbModel`).
One stage: SGD, lr 1e-2 for the classifier and the RGB ConvLSTM/layer4/fc, 1e-4 (`--flowLr`)
for the flow layer4.

    python main_twostream.py --datasetDir DIR --flowModel F.pth --rgbModel R.pth
"""
from utils.experiment import main

if __name__ == "__main__":
    main("twostream", description=__doc__)
