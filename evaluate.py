"""Evaluate a trained model on the test user(s) or split: predictions.csv, summary.json,
confusion_matrix.png, per_class.png (tools/evaluation.py does the work; --help says how).

    python evaluate.py --model ms_op --datasetDir DIR --modelStateDict experiments/main_ms_op_seq16/stage2/best_model.pth
"""
import sys

from tools.evaluation import main, parse_args, split_mean, topk_accuracy  # noqa: F401  (the script's functions)
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
