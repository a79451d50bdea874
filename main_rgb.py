"""Placeholder: the training script is wired up with the shared training loop (utils/)."""
import sys

if __name__ == "__main__":
    sys.exit("error: main_rgb.py is not implemented yet")
