"""Ego-RNN + motion segmentation (SparNet's MS head), Table 2-3 rows "Ego-rnn + MS Task".

Stage 1 is Ego-RNN stage 1. In stage 2 the MS head reads the attended features (`--msInput
attention`, the paper) or the plain layer4 features (`--msInput layer4`, SparNet) and predicts
the motion map of every frame: per-position classification (default) or `--regression`.

    python main_ms.py --datasetDir DIR                  # stage 1, then stage 2
    python main_ms.py --datasetDir DIR --stage 2 --lr 1e-4 --seqLen 16 --regression
"""
from utils.experiment import main

if __name__ == "__main__":
    main("ms", description=__doc__)
