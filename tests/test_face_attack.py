"""Universal face-hiding patches (Yang et al., ECCV 2020) and the classical black-box face detectors."""
import math

import pytest
import torch
import torch.nn.functional as F

from patchbench.training.face_patch import main_train_face_patch
from patchbench.attacks.face import (FacePatch, adversarial_loss, initial_patch,
                                     paste_on_faces, select_candidates)
from patchbench.data.faces import ASTRONAUT_FACE_BOX, real_faces
from patchbench.models.mtcnn import load_mtcnn

FACE = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
PATCH = torch.tensor([[35.0, 0.0, 65.0, 30.0]])
# Hand-built candidates: (box, score) with their IoU to the face / the patch in the comments.
CANDS = torch.tensor([[0.0, 0.0, 100.0, 100.0],     # c0: IoU(face) 1.0, low score
                      [5.0, 5.0, 100.0, 100.0],     # c1: IoU(face) 0.90, high score
                      [300.0, 300.0, 400.0, 400.0],  # c2: background, high score
                      [35.0, 0.0, 65.0, 30.0],      # c3: on the patch (IoU face 0.09), high score
                      [0.0, 0.0, 60.0, 60.0],       # c4: IoU(face) 0.36, high score
                      [0.0, 0.0, 60.0, 60.0]])      # c5: IoU(face) 0.36, low score
SCORES = torch.tensor([0.2, 0.95, 0.9, 0.8, 0.7, 0.3])


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(2)
    return load_mtcnn()


@pytest.fixture(scope="module")
def small_astronaut():
    """The astronaut at 128×128 (its face ≈ 24×27 px) with the scaled ground-truth box."""
    x = F.interpolate(real_faces().images, size=(128, 128), mode="area")
    return x, [torch.tensor([ASTRONAUT_FACE_BOX]) / 4]


def test_patch_iou_selects_windows_overlapping_a_face_above_0_6_whatever_their_score():
    w = select_candidates("patch-iou", CANDS, SCORES, FACE)
    assert w.tolist() == [1, 1, 0, 0, 0, 0]


def test_patch_score_selects_every_window_scoring_above_delta_minus_m():
    w = select_candidates("patch-score", CANDS, SCORES, FACE)
    assert w.tolist() == [0, 1, 1, 1, 1, 0]
    assert select_candidates("patch-score", CANDS, SCORES, FACE, delta=0.99, m=0.09).tolist() == \
        [0, 1, 0, 0, 0, 0]                                     # δ − m = 0.9: only 0.95 is above


def test_patch_score_focal_weights_selected_windows_by_s_to_the_gamma():
    w = select_candidates("patch-score-focal", CANDS, SCORES, FACE, gamma=2.0)
    assert torch.allclose(w, torch.tensor([0, 0.95 ** 2, 0.9 ** 2, 0.8 ** 2, 0.7 ** 2, 0]))


def test_patch_combination_needs_a_high_score_and_overlap_with_the_face_or_the_patch():
    w = select_candidates("patch-combination", CANDS, SCORES, FACE, PATCH)
    assert w.tolist() == [0, 1, 0, 1, 1, 0]                   # background c2 and low scores left out
    w_no_patch_rule = select_candidates("patch-combination", CANDS, SCORES, FACE, PATCH, iou_patch=1.0)
    assert w_no_patch_rule.tolist() == [0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="patch_boxes"):
        select_candidates("patch-combination", CANDS, SCORES, FACE)


def test_selection_only_matches_faces_of_the_same_image():
    boxes = torch.cat([CANDS[:2], CANDS[:2]])
    scores = torch.cat([SCORES[:2], SCORES[:2]])
    w = select_candidates("patch-iou", boxes, scores, [FACE, torch.zeros(0, 4)],
                          image_index=torch.tensor([0, 0, 1, 1]))
    assert w.tolist() == [1, 1, 0, 0]


def test_selection_rejects_unknown_strategies_and_bad_shapes():
    with pytest.raises(ValueError, match="strategy"):
        select_candidates("patch-magic", CANDS, SCORES, FACE)
    with pytest.raises(ValueError, match="K×4"):
        select_candidates("patch-score", CANDS[:, :3], SCORES, FACE)


def test_adversarial_loss_is_the_mean_weighted_log_score_per_stage_and_the_focal_weight_is_detached():
    s = torch.tensor([0.9, 0.6, 0.8, 0.1], requires_grad=True)
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    stage = torch.tensor([0, 0, 2, 2])
    loss = adversarial_loss(s, w, stage)
    expected = (math.log(0.9) + math.log(0.6)) / 2 + math.log(0.8)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert s.grad.tolist() == pytest.approx([0.5 / 0.9, 0.5 / 0.6, 1 / 0.8, 0.0])
    empty = adversarial_loss(s, torch.zeros(4), stage)
    assert empty.item() == 0.0 and empty.requires_grad


def test_patch_lands_top_centre_with_side_alpha_sqrt_wh_and_leaves_other_pixels_alone():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)]       # image 1 has no face
    patch = torch.ones(3, 16, 16)
    xp, mask, pboxes = paste_on_faces(x, boxes, patch, alpha=0.5)
    assert pboxes[0].tolist() == [[16.0, 8.0, 32.0, 24.0]]                    # side 0.5·32 = 16
    assert mask[0].sum() == 16 * 16 and mask[1].sum() == 0
    assert torch.equal(xp[mask.expand_as(x) == 0], x[mask.expand_as(x) == 0])
    assert torch.equal(xp[1], x[1])


def test_patch_larger_than_an_elongated_face_box_and_boxes_crossing_the_border_are_handled():
    x = torch.zeros(1, 3, 48, 48)
    boxes = [torch.tensor([[20.0, 10.0, 24.0, 46.0], [-10.0, -5.0, 12.0, 20.0]])]
    xp, mask, pboxes = paste_on_faces(x, boxes, torch.ones(3, 8, 8), alpha=0.9)
    assert pboxes[0][0, 2] - pboxes[0][0, 0] > 4                  # wider than its 4-px-wide face
    assert (pboxes[0] >= 0).all() and (pboxes[0] <= 48).all()
    assert mask.sum() > 0 and torch.equal(xp[mask.expand_as(xp) == 0], x[mask.expand_as(x) == 0])
    with pytest.raises(ValueError, match="no area inside"):
        paste_on_faces(x, [torch.tensor([[60.0, 60.0, 70.0, 70.0]])], torch.ones(3, 8, 8))


def test_facepatch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        FacePatch("patch-everything")
    with pytest.raises(ValueError, match="position"):
        FacePatch(position="left")
    with pytest.raises(ValueError, match="init"):
        FacePatch(init="banana")
    with pytest.raises(ValueError, match="alpha"):
        FacePatch(alpha=1.5)


def test_initialisations_are_distinct_images_in_unit_range():
    inits = [initial_patch(k, 16, generator=0) for k in ("noise", "natural", "face")]
    for p in inits:
        assert p.shape == (3, 16, 16) and 0 <= p.min() and p.max() <= 1
    assert not torch.equal(inits[0], inits[1]) and not torch.equal(inits[1], inits[2])
    assert torch.equal(inits[0], initial_patch("noise", 16, generator=0))      # seeded


def test_the_face_score_path_gives_nonzero_gradients_on_the_patch(detector, small_astronaut):
    x, boxes = small_astronaut
    patch = initial_patch("noise", 24, generator=0).requires_grad_(True)
    loss, n = FacePatch("patch-iou", alpha=0.5, stages=("pnet", "onet")).loss(detector, x, boxes, patch)
    assert n > 0
    loss.backward()
    assert torch.isfinite(patch.grad).all() and patch.grad.abs().sum() > 0


def test_a_few_steps_of_patch_score_lower_the_scores_of_the_windows_it_selected(detector, small_astronaut):
    x, boxes = small_astronaut
    fp = FacePatch("patch-score", alpha=0.5, epochs=3, lr=0.1, patch_size=24, stages=("pnet",))
    start = fp.apply(x, boxes, initial_patch("noise", 24, generator=0))
    with torch.no_grad():
        c0 = detector.candidates(start, stages=("pnet",))       # P-Net cells: same windows every time
    selected = select_candidates("patch-score", c0.boxes, c0.scores, boxes) > 0
    patch = fp.fit(detector, x, boxes, generator=0)
    with torch.no_grad():
        c1 = detector.candidates(fp.apply(x, boxes, patch), stages=("pnet",))
    assert selected.sum() > 0 and torch.equal(c0.boxes, c1.boxes)
    assert c1.scores[selected].mean() < c0.scores[selected].mean() - 0.05
    assert len(fp.history_) == 3 and 0 <= patch.min() and patch.max() <= 1


def test_fit_and_apply_accept_images_without_faces(detector):
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    boxes = [torch.zeros(0, 4), torch.tensor([[10.0, 10.0, 40.0, 40.0]])]
    fp = FacePatch("patch-combination", epochs=1, patch_size=8)
    patch = fp.fit(detector, x, boxes, generator=0)
    assert patch.shape == (3, 8, 8)
    assert torch.equal(fp.apply(x, boxes, patch)[0], x[0])
    assert torch.equal(fp.apply(x, [torch.zeros(0, 4)] * 2, patch), x)


def test_training_command_checkpoints_and_resumes(tmp_path):
    args = ["--strategy", "patch-score", "--out", str(tmp_path), "--n-train", "2", "--size", "64",
            "--batch-size", "2"]
    assert main_train_face_patch(args + ["--epochs", "1"]) == 0
    first = torch.load(tmp_path / "patch-score.pt", weights_only=True)
    assert len(first["history"]) == 1 and (tmp_path / "patch-score.png").is_file()
    assert main_train_face_patch(args + ["--epochs", "2"]) == 0          # resumes after epoch 1
    second = torch.load(tmp_path / "patch-score.pt", weights_only=True)
    assert second["history"][0] == first["history"][0] and len(second["history"]) == 2


def test_haar_and_lbp_cascades_find_the_astronaut_face_with_unit_scores():
    pytest.importorskip("cv2")
    from patchbench.metrics.detection import precision_recall
    from patchbench.models.cascades import HaarFaceDetector, LBPFaceDetector, load_cascade
    x, boxes, _ = real_faces()
    for det in (HaarFaceDetector(), LBPFaceDetector()):
        d = det.detect(x)
        assert len(d) == 1 and torch.equal(d[0].scores, torch.ones(len(d[0].boxes)))
        assert precision_recall(d, boxes, delta=0.99)[1] == 1.0
    assert isinstance(load_cascade("lbp"), LBPFaceDetector)
    with pytest.raises(LookupError, match="haar, lbp"):
        load_cascade("dlib")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        HaarFaceDetector().detect(x * 255)
