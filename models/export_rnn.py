"""Export the recurrent example models (digits read as 8 time steps of 8 pixels, and a
character-level next-character model) to ONNX.

Untrained weights (torch's default init under a fixed seed), like export_torch.py: these are the
models projc is meant to train. Each classifies from the last step's output, ``o[:, -1]``, except
``char_rnn_seq``, which has per-step logits ``[B, T, C]`` (the next character after every step).

    .venv/bin/python models/export_rnn.py [--out DIR] [--only NAME]

``SequenceClassifier`` and ``export`` are also used by tests/test_recurrent.py to export the
variants it checks (layers, directions, batch_first) into a temporary directory.
"""
import argparse
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class SequenceClassifier(nn.Module):
    """A recurrent layer over [B, T, I] (or [T, B, I]) then a linear layer on the last step."""

    def __init__(self, cell="rnn", inputs=8, hidden=32, classes=10, layers=1,
                 bidirectional=False, batch_first=True, nonlinearity="tanh", per_step=False):
        super().__init__()
        self.per_step = per_step
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.batch_first = batch_first
        self.rnn = CELLS[cell](inputs, hidden, num_layers=layers, bidirectional=bidirectional,
                               batch_first=batch_first, **kwargs)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x):
        out = self.rnn(x)[0]
        if self.per_step:  # logits after every step, [B, T, C]
            return self.fc(out if self.batch_first else out.transpose(0, 1))
        return self.fc(out[:, -1] if self.batch_first else out[-1])


# name -> (constructor kwargs, seed, time steps)
MODELS = {
    "rnn_digits": (dict(cell="rnn", nonlinearity="relu"), 0, 8),
    "rnn_tanh_digits": (dict(cell="rnn", nonlinearity="tanh"), 0, 8),
    "gru_digits": (dict(cell="gru"), 0, 8),
    "lstm_digits": (dict(cell="lstm"), 0, 8),
    # `--data text`: 16 one-hot characters (30 symbols, projc.train.data.TEXT_VOCAB) -> the next one
    "char_rnn": (dict(cell="rnn", nonlinearity="relu", inputs=30, hidden=64, classes=30), 0, 16),
    # the same with per-step logits [B, 16, 30]: trained with the mean cross-entropy over the steps
    "char_rnn_seq": (dict(cell="rnn", nonlinearity="relu", inputs=30, hidden=64, classes=30, per_step=True),
                     0, 16),
}


def build(seed=0, **kwargs) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(**kwargs).eval()


def export(model: SequenceClassifier, path: str, steps: int = 8, check: bool = True) -> None:
    """TorchScript export (opset 17) with a dynamic batch axis; checks onnxruntime vs torch."""
    batch_axis = 0 if model.batch_first else 1
    shape = [2, steps, model.rnn.input_size]
    shape[0], shape[batch_axis] = shape[batch_axis], shape[0]
    example = torch.zeros(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that batch_first RNNs export with a batch size
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {batch_axis: "batch"}, "logits": {0: "batch"}})
    if check:
        _check(model, path, steps, batch_axis)


def _check(model, path, steps, batch_axis):
    onnx.checker.check_model(onnx.load(path))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        shape = [batch, steps, model.rnn.input_size]
        shape[0], shape[batch_axis] = shape[batch_axis], shape[0]
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--only", choices=sorted(MODELS))
    args = parser.parse_args()
    for name, (kwargs, seed, steps) in MODELS.items():
        if args.only and name != args.only:
            continue
        path = os.path.join(args.out, f"{name}.onnx")
        export(build(seed, **kwargs), path, steps=steps)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
