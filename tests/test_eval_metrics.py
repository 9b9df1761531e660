"""Segmentation metrics: a hand-worked example, scikit-learn's confusion matrix, and mmseg's formulas."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from cocu_core.evaluation.metrics import ConfusionMatrix, metrics_from_matrix

torch.set_num_threads(1)


def test_hand_worked_example_with_ignore_and_absent_class():
    # 4 classes; class 3 appears in neither map; the last column is ignored (its predictions don't count).
    label = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(pred, label)
    r = cm.results()
    # valid (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    # class 0: I=1 G=2 P=2 U=3; class 1: I=2 G=2 P=3 U=3; class 2: I=1 G=2 P=1 U=2; class 3: U=0 -> NaN
    np.testing.assert_allclose(r.iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(r.iou[3]) and math.isnan(r.acc[3])
    assert r.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # NaN class skipped, not counted as 0
    np.testing.assert_allclose(r.acc[:3], [1 / 2, 1, 1 / 2])
    assert r.macc == pytest.approx(2 / 3)
    assert r.aacc == pytest.approx(4 / 6)
    assert r.pixels == 6
    expected = np.zeros((4, 4), np.int64)
    for g, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0)]:
        expected[g, p] += 1
    np.testing.assert_array_equal(r.confusion, expected)
    d = r.to_dict(["a", "b", "c", "d"])
    assert d["per_class"]["d"] == {"IoU": None, "Acc": None}
    assert d["mIoU"] == pytest.approx(0.5)
    assert "50.00" in r.table(["a", "b", "c", "d"])


def test_class_predicted_but_absent_from_ground_truth_counts_as_zero():
    label = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    r = _run(3, [(pred, label)])
    assert r.iou[2] == 0.0  # predicted only: IoU 0 is averaged in (mmseg)
    assert math.isnan(r.acc[2])  # but its accuracy is undefined
    assert r.miou == pytest.approx((1 / 2 + 1 + 0) / 3)


def _run(n, pairs, ignore=255):
    cm = ConfusionMatrix(n, ignore_index=ignore)
    for p, y in pairs:
        cm.update(p, y)
    return cm.results()


def test_equals_sklearn_confusion_matrix_iou_on_random_maps():
    rng = np.random.default_rng(0)
    n = 7
    labels, preds = [], []
    for _ in range(5):
        h, w = rng.integers(20, 60, size=2)
        y = rng.integers(0, n - 1, size=(h, w))  # class n-1 never in the ground truth
        y[rng.random((h, w)) < 0.15] = 255
        p = np.where(rng.random((h, w)) < 0.6, np.clip(y, 0, n - 1), rng.integers(0, n, size=(h, w)))
        labels.append(y)
        preds.append(p)
    r = _run(n, [(torch.from_numpy(p), torch.from_numpy(y)) for p, y in zip(preds, labels)])

    y_all = np.concatenate([y.ravel() for y in labels])
    p_all = np.concatenate([p.ravel() for p in preds])
    keep = y_all != 255
    sk = confusion_matrix(y_all[keep], p_all[keep], labels=list(range(n)))
    np.testing.assert_array_equal(r.confusion, sk)
    inter = np.diag(sk).astype(float)
    union = sk.sum(0) + sk.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    np.testing.assert_allclose(r.iou, iou, equal_nan=True)
    assert r.miou == pytest.approx(np.nanmean(iou))
    assert r.aacc == pytest.approx(inter.sum() / sk.sum())
    assert r.pixels == int(keep.sum())


def _mmseg_reference(preds, labels, n, ignore):
    """mmseg's intersect_and_union summed over images: torch.histc over [0, n-1] after dropping ignore."""
    tot = np.zeros((4, n))
    for p, y in zip(preds, labels):
        m = y != ignore
        p, y = p[m], y[m]
        inter = p[p == y]
        hist = lambda v: torch.histc(torch.from_numpy(v).double(), bins=n, min=0, max=n - 1).numpy()  # as mmseg
        ai, ap, al = hist(inter), hist(p), hist(y)
        tot += np.stack([ai, ap + al - ai, ap, al])
    ai, au, _, al = tot
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = ai / au, ai / al
    return iou, acc, ai.sum() / al.sum()


def test_out_of_range_values_follow_mmseg():
    rng = np.random.default_rng(1)
    n = 5
    preds, labels = [], []
    for _ in range(4):
        y = rng.integers(-1, n + 2, size=(30, 40))  # -1, n, n+1: labels out of range but not ignored
        y[:, :5] = 255
        p = rng.integers(-1, n + 3, size=(30, 40))  # negative and too-large predictions
        preds.append(p)
        labels.append(y)
    r = _run(n, [(torch.from_numpy(p), torch.from_numpy(y)) for p, y in zip(preds, labels)])
    iou, acc, aacc = _mmseg_reference(preds, labels, n, 255)
    np.testing.assert_allclose(r.iou, iou, equal_nan=True)
    np.testing.assert_allclose(r.acc, acc, equal_nan=True)
    assert r.aacc == pytest.approx(aacc)
    assert r.miou == pytest.approx(np.nanmean(iou))


def test_batches_numpy_inputs_merge_and_reset():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=(3, 16, 16))
    p = rng.integers(0, 4, size=(3, 16, 16))
    whole = ConfusionMatrix(4)
    whole.update(torch.from_numpy(p), torch.from_numpy(y))  # a batch at once
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p[0], y[0])  # numpy arrays are accepted too
    b.update(p[1:], y[1:])
    a.merge(b)
    np.testing.assert_array_equal(a.results().confusion, whole.results().confusion)
    a.reset()
    r = a.results()
    assert r.pixels == 0 and math.isnan(r.miou) and math.isnan(r.aacc)


def test_bad_inputs_are_clear():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(4))
    with pytest.raises(ValueError, match="class names"):
        cm.results().to_dict(["only one"])


def test_metrics_from_matrix_on_a_hand_built_matrix_with_out_of_range_row_and_column():
    # 2 classes + the out-of-range row/column (index 2). Rows = ground truth, columns = prediction.
    m = np.array([[3, 1, 2],   # class 0: 3 right, 1 as class 1, 2 predicted out of range
                  [0, 4, 0],   # class 1: 4 right
                  [5, 0, 0]])  # label out of range (not ignored), predicted class 0: counts in P_0 only
    r = metrics_from_matrix(m)
    # class 0: I=3, G=3+1+2=6, P=3+0+5=8, U=11; class 1: I=4, G=4, P=1+4=5, U=5
    np.testing.assert_allclose(r.iou, [3 / 11, 4 / 5])
    np.testing.assert_allclose(r.acc, [3 / 6, 4 / 4])
    assert r.miou == pytest.approx((3 / 11 + 4 / 5) / 2)
    assert r.macc == pytest.approx((1 / 2 + 1) / 2)
    assert r.aacc == pytest.approx(7 / 10)  # sum I / sum G: the out-of-range label row is not in G
    assert r.pixels == 10
    np.testing.assert_array_equal(r.confusion, [[3, 1], [0, 4]])
    # the accumulator reaches the same matrix from pixels: 3x(0,0) 1x(0,1) 2x(0,-1) 4x(1,1) 5x(7,0) and ignored
    pairs = [(0, 0)] * 3 + [(0, 1)] + [(0, -1)] * 2 + [(1, 1)] * 4 + [(7, 0)] * 5 + [(255, 1)] * 3
    y, p = (torch.tensor(v) for v in zip(*pairs))
    cm = ConfusionMatrix(2)
    cm.update(p, y)
    np.testing.assert_array_equal(cm.matrix.numpy().reshape(3, 3), m)


def test_report_record_and_table_are_the_literal_ones():
    # the hand-built matrix above: IoU 3/11 and 4/5, Acc 1/2 and 1, aAcc 7/10 (values worked out there)
    r = metrics_from_matrix(np.array([[3, 1, 2], [0, 4, 0], [5, 0, 0]]))
    d = r.to_dict(["a", "b"])
    assert set(d) == {"mIoU", "mAcc", "aAcc", "pixels", "per_class"} and d["pixels"] == 10
    assert (d["mIoU"], d["mAcc"], d["aAcc"]) == pytest.approx(((3 / 11 + 0.8) / 2, 0.75, 0.7))
    assert d["per_class"]["a"] == pytest.approx({"IoU": 3 / 11, "Acc": 0.5})
    assert d["per_class"]["b"] == pytest.approx({"IoU": 0.8, "Acc": 1.0}) and list(d["per_class"]) == ["a", "b"]
    # mmseg's per-class table, percentages with 2 decimals, names cut at 24 characters
    assert r.table(["a" * 30, "b"]).splitlines() == [
        "class                        IoU     Acc",
        "aaaaaaaaaaaaaaaaaaaaaaaa   27.27   50.00",
        "b                          80.00  100.00",
        "mIoU / mAcc / aAcc         53.64   75.00   70.00"]
    with pytest.raises(ValueError, match=r"^1 class names for 2 classes$"):
        r.to_dict(["a"])
    # a class in neither map prints "nan", not a number
    absent = metrics_from_matrix(np.array([[2, 0, 0], [0, 0, 0], [0, 0, 0]]))
    assert absent.table(["a", "b"]).splitlines()[2] == f"{'b':<24} {'nan':>7} {'nan':>7}"
