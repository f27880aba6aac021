"""RBF-kernel SVMs: the kernel certificate (Hein & Andriushchenko Prop. 2.1) beside the generic bounds.

    .venv/bin/python benchmarks/svm_certify.py [--train 3000] [--limit 50] [--norm 2]
        [--methods kernel,lmt,ibp,bcp,crown]

Trains scikit-learn's SVC(kernel="rbf", gamma="scale", C=10) on the first --train Fashion-MNIST training images
(../shared/data/fashion-mnist; all ten classes, one-vs-one, and the two-class T-shirt/top vs shirt problem),
exports it with skl2onnx, and certifies the first --limit images of the bundled test sample (data/fashion-mnist-1k)
with each method through ``run_certify``: seconds, median radius over correctly classified inputs, and per
generic method the fraction of inputs whose kernel radius is at least its radius and the median ratio.
Needs scikit-learn and skl2onnx (``pip install -e '.[sklearn]'``).
"""
from __future__ import annotations

import argparse
import gzip
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import ROOT, zoo_dir  # noqa: E402  (puts the repo on sys.path)
from verifier.commands.certify_run import run_certify  # noqa: E402


def train_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    folder = zoo_dir().parent / "data" / "fashion-mnist"
    x = np.frombuffer(gzip.open(folder / "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    y = np.frombuffer(gzip.open(folder / "train-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return (x.reshape(-1, 784)[:n] / 255.0).astype(np.float32), y[:n].astype(np.int64)


def models(n: int, folder: Path) -> list[tuple[str, Path, np.ndarray | None]]:
    """(name, ONNX path, the classes kept) of the ten-class and the two-class SVC."""
    from skl2onnx import to_onnx
    from sklearn.svm import SVC

    x, y = train_images(n)
    out = []
    for name, keep in (("svc-10-class", None), ("svc-tshirt-vs-shirt", np.array([0, 6]))):
        mask = np.ones(len(y), bool) if keep is None else np.isin(y, keep)
        labels = y[mask] if keep is None else (y[mask] == keep[1]).astype(np.int64)
        start = time.perf_counter()
        est = SVC(kernel="rbf", gamma="scale", C=10).fit(x[mask], labels)
        path = folder / f"{name}.onnx"
        path.write_bytes(to_onnx(est, x[:1]).SerializeToString())
        print(f"{name}: {len(est.support_)} support vectors, trained in {time.perf_counter() - start:.1f} s")
        out.append((name, path, keep))
    return out


def test_data(keep: np.ndarray | None, folder: Path) -> Path:
    """The bundled test sample as an .npz (only the kept classes, relabelled 0/1, for the two-class SVC)."""
    source = ROOT / "data" / "fashion-mnist-1k"
    x = np.frombuffer(gzip.open(source / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    y = np.frombuffer(gzip.open(source / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8).astype(np.int64)
    x = (x.reshape(-1, 784) / 255.0).astype(np.float32)
    if keep is not None:
        mask = np.isin(y, keep)
        x, y = x[mask], (y[mask] == keep[1]).astype(np.int64)
    path = folder / f"test-{'all' if keep is None else 'pair'}.npz"
    np.savez(path, x=x, y=y)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--norm", default="2", choices=["2", "inf"])
    parser.add_argument("--methods", default="kernel,lmt,ibp,bcp,crown")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # skl2onnx reads SVC attributes sklearn deprecates
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, keep in models(args.train, Path(tmp)):
            data, radii = test_data(keep, Path(tmp)), {}
            print(f"{'model':<22}{'method':<9}{'seconds':>9}{'median':>10}{'kernel >= it':>14}{'median ratio':>14}")
            for method in args.methods.split(","):
                start = time.perf_counter()
                r = run_certify(str(path), str(data), norm=args.norm, method=method, limit=args.limit)
                radii[method] = np.array(r["radii"])
                seconds, extra = time.perf_counter() - start, ""
                if method != "kernel" and "kernel" in radii:
                    k, other = radii["kernel"], radii[method]
                    pos = other > 0
                    ratio = np.median(k[pos] / other[pos]) if pos.any() else float("nan")
                    extra = f"{(k >= other).mean():>14.0%}{ratio:>14.1f}"
                print(f"{name:<22}{method:<9}{seconds:>9.1f}{r['median_radius']:>10.4g}{extra}")


if __name__ == "__main__":
    main()
