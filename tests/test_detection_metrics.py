"""Detection scores of Yang et al. (ECCV 2020, §4.1): P/R at δ, Threshold-F_β, AF_β, AP, patch hits."""
import pytest
import torch

from patchbench.metrics.detection import (afbeta, average_precision, count_patch_detections,
                                          match_detections, precision_recall, threshold_fbeta_curve)

GT = [torch.tensor([[10.0, 10, 50, 50], [100, 100, 140, 150]]), torch.tensor([[0.0, 0, 30, 30]])]


def _perfect():
    return [(g.clone(), torch.ones(len(g))) for g in GT]


def _empty():
    return [(torch.zeros(0, 4), torch.zeros(0)) for _ in GT]


def test_perfect_detector_has_full_precision_recall_and_afbeta():
    assert precision_recall(_perfect(), GT, delta=0.99) == (1.0, 1.0)
    for beta in (0.001, 0.01, 0.1, 0.5):
        assert afbeta(_perfect(), GT, beta) == pytest.approx(1.0)
    assert average_precision(_perfect(), GT) == pytest.approx(1.0)


def test_empty_detector_has_zero_recall_and_zero_afbeta():
    p, r = precision_recall(_empty(), GT)
    assert r == 0.0 and p == 1.0                     # no detection, so no false positive
    assert afbeta(_empty(), GT, 0.1) == 0.0
    assert average_precision(_empty(), GT) == 0.0


def test_precision_recall_on_a_hand_built_case():
    dets = [
        (torch.tensor([[11.0, 11, 50, 50],        # TP (IoU 0.95), score .999
                       [12.0, 12, 50, 50],        # duplicate of the same face: FP, score .995
                       [100.0, 100, 140, 150],    # TP, but scored .95 < δ
                       [300.0, 300, 340, 340]]),  # background FP, score .992
         torch.tensor([0.999, 0.995, 0.95, 0.992])),
        (torch.tensor([[0.0, 0, 30, 30]]), torch.tensor([0.5])),
    ]
    p, r = precision_recall(dets, GT, delta=0.99)
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    p, r = precision_recall(dets, GT, delta=0.9)
    assert (p, r) == (pytest.approx(2 / 4), pytest.approx(2 / 3))
    p, r = precision_recall(dets, GT, delta=0.0)
    assert (p, r) == (pytest.approx(3 / 5), pytest.approx(1.0))


def test_greedy_matching_gives_each_face_to_the_highest_scored_detection():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 9, 10]])
    assert match_detections(boxes, torch.tensor([0.2, 0.9]), gt).tolist() == [False, True]
    # At IoU ≥ 0.95 the top detection (IoU 0.9) misses, so the face is still free for the exact box.
    assert match_detections(boxes, torch.tensor([0.2, 0.9]), gt, iou_threshold=0.95).tolist() == [True, False]


def test_fbeta_follows_the_papers_definition_and_small_beta_tracks_recall():
    # One image, two faces, one found with score .8, one background FP with score .6.
    dets = [(torch.tensor([[10.0, 10, 50, 50], [300, 300, 340, 340]]), torch.tensor([0.8, 0.6]))]
    gt = [GT[0]]
    t, f = threshold_fbeta_curve(dets, gt, beta=0.5, thresholds=[0.5, 0.7, 0.9])
    P, R, b2 = 0.5, 0.5, 0.25
    assert f[0] == pytest.approx((1 + b2) / (b2 / P + 1 / R))
    assert f[1] == pytest.approx((1 + b2) / (b2 / 1.0 + 1 / 0.5))     # P = 1, R = .5
    assert f[2] == 0.0
    _, f_small = threshold_fbeta_curve(dets, gt, beta=0.001, thresholds=[0.5, 0.7])
    assert torch.allclose(f_small, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-5)


def test_lowering_face_scores_below_delta_lowers_afbeta_but_not_ap():
    """§4.1: an attack that lowers every face's score keeps the ranking, so AP cannot see it."""
    clean = [(g.clone(), torch.full((len(g),), 0.999)) for g in GT]
    attacked = [(g.clone(), torch.full((len(g),), 0.3)) for g in GT]
    assert average_precision(attacked, GT) == pytest.approx(average_precision(clean, GT))
    assert afbeta(attacked, GT, 0.1) < 0.35 < 0.95 < afbeta(clean, GT, 0.1)
    assert precision_recall(attacked, GT)[1] == 0.0


def test_average_precision_all_points_interpolation():
    gt = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])]
    dets = [(torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
             torch.tensor([0.9, 0.8, 0.7]))]
    # PR points: (0.5, 1), (0.5, .5), (1, 2/3) → envelope: 1 up to R=.5, 2/3 up to R=1.
    assert average_precision(dets, gt) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_count_patch_detections_by_iou_and_by_centre():
    patch = torch.tensor([[200.0, 200, 260, 260], [0, 0, 1, 1]])
    dets = [(torch.tensor([[205.0, 205, 262, 258], [10, 10, 50, 50], [220, 220, 290, 290]]),
             torch.tensor([0.999, 0.999, 0.999])),
            (torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]))]
    assert count_patch_detections(dets, patch).tolist() == [1, 0]      # second is below δ
    assert count_patch_detections(dets, patch, criterion="center").tolist() == [2, 0]
    assert count_patch_detections(dets, patch, delta=0.4).tolist() == [1, 1]


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="one entry per image"):
        precision_recall(_perfect()[:1], GT)
    with pytest.raises(ValueError, match="K×4"):
        precision_recall([(torch.zeros(2, 3), torch.zeros(2))], [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="increasing"):
        afbeta(_perfect(), GT, 0.1, thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match="beta"):
        afbeta(_perfect(), GT, 0.0)
    with pytest.raises(LookupError, match="criterion"):
        count_patch_detections(_perfect(), torch.zeros(2, 4), criterion="overlap")
