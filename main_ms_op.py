"""SAMSOP-Net: Ego-RNN + motion segmentation + order prediction (the paper's model).

Stage 1 is Ego-RNN stage 1. In stage 2 the MS head reads the attended features and the OP head
(after OPN) sorts 4 shuffled frames of the clip from the ResNet-34 features already computed
for the clip; total loss = action CE + MS loss + OP loss. `--noMS` gives the OP-only ablation.

    python main_ms_op.py --datasetDir DIR               # stage 1, then stage 2
    python main_ms_op.py --datasetDir DIR --stage 2 --lr 1e-4 --seqLen 16
"""
from utils.experiment import main

if __name__ == "__main__":
    main("ms_op", description=__doc__)
