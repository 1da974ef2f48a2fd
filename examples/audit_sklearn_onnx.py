"""Audit an ONNX model bundlelab did not write: scikit-learn's MLPClassifier via skl2onnx.

Trains an MLP on digits, converts it to ONNX, saves the training data as an .npz and audits
it twice, exactly as a user with an ONNX file would: from Python
(``bundlelab.adapters.onnx.audit``) and with the command line (``bundlelab audit``), which runs
the same function and writes the report and its plot.

    python examples/audit_sklearn_onnx.py --out results/
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from bundlelab.adapters.onnx import audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 16, 8, 4, 2])
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=tuple(args.hidden), max_iter=300, random_state=0).fit(x, digits.target)
    onnx_model = to_onnx(clf, x[:1], target_opset=17, options={"zipmap": False})
    onnx_model.ir_version = min(onnx_model.ir_version, 10)  # readable by older onnxruntime
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "digits-mlp.onnx"
    model_path.write_bytes(onnx_model.SerializeToString())
    np.savez(args.out / "digits-train.npz", x=x, labels=digits.target)
    print(f"train accuracy {clf.score(x, digits.target):.3f}; auditing {model_path}")
    report = audit(model_path, args.out / "digits-train.npz", n_samples=1024, seed=0)
    first = report.first_conflicting
    print(f"Python: {len(report)} layers, first conflicting: {first.layer if first else 'none'}")
    subprocess.run(
        [sys.executable, "-m", "bundlelab", "audit", str(model_path), "--data",
         str(args.out / "digits-train.npz"), "--n-samples", "1024", "--seed", "0",
         "--plot", str(args.out / "digits-mlp-entropy.png"),
         "--output", str(args.out / "digits-mlp-report.json")],
        check=True,
    )
    print((args.out / "digits-mlp-report.json").read_text()[:400])


if __name__ == "__main__":
    main()
