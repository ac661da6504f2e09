"""Train iris_classifier's weights (numpy only): softmax regression on standardized features.

    python model_repository/iris_classifier/train.py   # rewrites 1/weights.npz

Data: iris.csv (Fisher's Iris data set, 150 rows, from the UCI Machine Learning Repository,
CC BY 4.0). Every fifth row is held out; the script prints the held-out accuracy. Training is
deterministic (full-batch gradient descent from zeros), so the weights are reproducible.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = ("setosa", "versicolor", "virginica")


def load() -> tuple[np.ndarray, np.ndarray]:
    with open(HERE / "iris.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[k]) for k in list(r)[:4]] for r in rows], dtype=np.float64)
    y = np.array([LABELS.index(r["species"]) for r in rows])
    return x, y


def train(
    x: np.ndarray, y: np.ndarray, steps: int = 3000, lr: float = 0.5
) -> dict[str, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    onehot = np.eye(len(LABELS))[y]
    w = np.zeros((x.shape[1], len(LABELS)))
    b = np.zeros(len(LABELS))
    for _ in range(steps):
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(x)
        w -= lr * (z.T @ grad + 1e-3 * w)
        b -= lr * grad.sum(axis=0)
    return {"mean": mean, "std": std, "w": w, "b": b}


def predict(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (x - params["mean"]) / params["std"]
    return np.asarray((z @ params["w"] + params["b"]).argmax(axis=1))


def main() -> None:
    x, y = load()
    held = np.arange(len(x)) % 5 == 4
    params = train(x[~held], y[~held])
    accuracy = float((predict(params, x[held]) == y[held]).mean())
    print(f"held-out accuracy: {accuracy:.3f} on {int(held.sum())} rows")
    np.savez(
        HERE / "1" / "weights.npz",
        **{k: v.astype(np.float32) for k, v in params.items()},
        labels=np.array(LABELS),
    )


if __name__ == "__main__":
    main()
