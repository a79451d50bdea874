"""Convolutional LSTM cell of Ego-RNN (docs/design.md §1).

    i  = sigmoid(W_xi * x + b_i + W_hi * h)
    f  = sigmoid(W_xf * x + b_f + W_hf * h)
    g  = tanh   (W_xc * x + b_c + W_hc * h)
    o  = sigmoid(W_xo * x + b_o + W_ho * h)
    c' = g * i + c * f
    h' = o * tanh(c')

`*` is a 3x3 convolution, stride 1, padding 1. Only the input (x) convolutions have a bias; there
are no peepholes. Weights are Xavier-normal per convolution, biases zero, and the state starts at
zeros. The classifier of Ego-RNN reads the final cell state c.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

GATES = ("i", "f", "c", "o")


class ConvLSTMCell(nn.Module):
    # The convolution `*` of the equations (models/speed.py gives a cell in CPU bf16 training the
    # same function with a faster weight gradient).
    conv2d = staticmethod(F.conv2d)

    def __init__(self, input_size, hidden_size, kernel_size=3):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.padding = kernel_size // 2
        for gate in GATES:
            conv_x = nn.Conv2d(input_size, hidden_size, kernel_size, padding=self.padding, bias=True)
            conv_h = nn.Conv2d(hidden_size, hidden_size, kernel_size, padding=self.padding, bias=False)
            nn.init.xavier_normal_(conv_x.weight)
            nn.init.zeros_(conv_x.bias)
            nn.init.xavier_normal_(conv_h.weight)
            setattr(self, f"conv_x{gate}", conv_x)  # W_xi, W_xf, W_xc, W_xo (+ biases)
            setattr(self, f"conv_h{gate}", conv_h)  # W_hi, W_hf, W_hc, W_ho

    # The four gates are computed as one convolution with the four kernels stacked, which gives
    # the same numbers as four separate convolutions but runs as one larger matrix product.
    def _stacked(self, kind):
        convs = [getattr(self, f"conv_{kind}{gate}") for gate in GATES]
        weight = torch.cat([conv.weight for conv in convs])
        bias = torch.cat([conv.bias for conv in convs]) if kind == "x" else None
        return weight, bias

    def input_gates(self, x):
        """W_x* x + b for all four gates, (N, 4*hidden, h, w): it does not depend on the state."""
        weight, bias = self._stacked("x")
        return self.conv2d(x, weight, bias, padding=self.padding)

    def step(self, gx, state, w_h=None):
        """One time step from precomputed input gates gx; state (h, c) or None (zeros)."""
        # Under mixed precision the convolutions run in bf16/fp16, but the gates and the state
        # are kept in float32 so the cell state does not lose precision over the clip.
        if state is None:
            # Zero initial state: W_h* h is zero, so the hidden convolution is skipped.
            gates = gx.float()
            c = torch.zeros_like(gates[:, :self.hidden_size])
        else:
            h, c = state
            w_h = self._stacked("h")[0] if w_h is None else w_h
            hidden = self.conv2d(h, w_h, padding=self.padding)
            gates = gx.float() + hidden.float()
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.tanh(g) * torch.sigmoid(i) + c * torch.sigmoid(f)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def forward(self, x, state=None):
        """x (N, input_size, h, w), state (h, c) or None -> (h, c), each (N, hidden_size, h, w)."""
        return self.step(self.input_gates(x), state)

    def forward_sequence(self, xs, state=None):
        """xs (B, T, input_size, h, w) -> final (h, c); same result as calling forward T times.

        The input convolutions of all T frames run as one batch before the recurrence."""
        B, T = xs.shape[:2]
        gx = self.input_gates(xs.flatten(0, 1)).unflatten(0, (B, T))
        w_h = self._stacked("h")[0]
        device = xs.device.type
        if torch.is_autocast_enabled(device):
            # Cast the stacked hidden kernels once, not in each of the T steps (autocast caches
            # casts of parameters only, and w_h is a concatenation of them).
            w_h = w_h.to(torch.get_autocast_dtype(device))
        # unbind: one backward node for all T steps (indexing gx[:, t] would add T full-size
        # zero gradients in backward); the same values and the same gradients.
        for gx_t in gx.unbind(1):
            state = self.step(gx_t, state, w_h)
        return state
