"""MTCNN (Zhang et al. 2016) with facenet-pytorch's weights, and the pure-torch NMS it runs on."""
import math

import pytest
import torch
import torch.nn.functional as F

from patchbench.data.faces import real_faces
from patchbench.models.mtcnn import MTCNN, area_crops, integral_image, load_mtcnn
from patchbench.models.nms import batched_nms, box_iou, nms

REFERENCE_BOX = torch.tensor([[181.0, 62.0, 268.0, 172.0]])    # facenet-pytorch on the astronaut


def _random_boxes(n, g, size=50.0):
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def _brute_nms(boxes, scores, groups, thr, mode="union", offset=0.0):
    """Textbook greedy NMS, one box at a time."""
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if groups[i] != groups[j]:
                continue
            a, b = boxes[i].tolist(), boxes[j].tolist()
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + offset)
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + offset)
            area = lambda r: (r[2] - r[0] + offset) * (r[3] - r[1] + offset)  # noqa: E731
            den = min(area(a), area(b)) if mode == "min" else area(a) + area(b) - iw * ih
            if iw * ih / den > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("mode,offset", [("union", 0.0), ("min", 1.0)])
def test_batched_nms_matches_brute_force_greedy(mode, offset):
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        boxes = _random_boxes(120, g)
        scores = torch.rand(120, generator=g)
        groups = torch.randint(0, 3, (120,), generator=g)
        for thr in (0.3, 0.5, 0.7):
            got = batched_nms(boxes, scores, groups, thr, mode=mode, offset=offset)
            want = _brute_nms(boxes, scores, groups, thr, mode, offset)
            assert sorted(got.tolist()) == sorted(want)
            assert torch.all(scores[got][:-1] >= scores[got][1:])          # by descending score


def test_nms_keeps_highest_and_drops_its_duplicate():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.8]), 0.5)
    assert keep.tolist() == [1, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_box_iou_hand_computed():
    iou = box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3], [5, 5, 6, 6], [0, 0, 2, 2]]))
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="K×4"):
        box_iou(torch.zeros(3, 5), torch.zeros(1, 4))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_mtcnn()


@pytest.fixture(scope="module")
def astronaut():
    return real_faces().images


@pytest.fixture(scope="module")
def small_astronaut(astronaut):
    return F.interpolate(astronaut, size=(256, 256), mode="area")    # face ≈ 45 px: still found


def test_mtcnn_finds_the_astronauts_face(model, astronaut):
    det = model.detect(astronaut)
    assert len(det) == 1
    boxes, scores, marks = det[0]
    assert boxes.shape == (1, 4) and marks.shape == (1, 5, 2)
    assert float(box_iou(boxes, REFERENCE_BOX)) >= 0.7
    assert float(box_iou(boxes, real_faces().boxes[0])) >= 0.7      # and with the hand-checked box
    assert float(scores[0]) > 0.99
    inside = (marks[0] >= boxes[0, :2]) & (marks[0] <= boxes[0, 2:])
    assert inside.all()                                             # eyes, nose, mouth in the box
    assert marks[0, 0, 0] < marks[0, 1, 0]                          # left eye left of right eye


def test_batched_detect_equals_one_image_at_a_time(model, small_astronaut):
    pair = torch.cat([small_astronaut, small_astronaut.flip(-1)])
    together = model.detect(pair)
    for i in range(2):
        alone = model.detect(pair[i:i + 1])[0]
        assert torch.allclose(together[i].boxes, alone.boxes, atol=1e-3)
        assert torch.allclose(together[i].scores, alone.scores, atol=1e-5)
    assert len(together[1].boxes) == 1                               # the mirrored face is found too


def test_crop_chunks_do_not_change_detections_or_candidates(small_astronaut):
    pair = torch.cat([small_astronaut, small_astronaut.flip(-1)])
    whole, tiny = load_mtcnn(), load_mtcnn()
    whole.crop_chunk = {24: 10 ** 6, 48: 10 ** 6}
    tiny.crop_chunk = {24: 7, 48: 1}                                 # many chunks, uneven last one
    for a, b in zip(whole.detect(pair), tiny.detect(pair)):
        assert torch.allclose(a.boxes, b.boxes, atol=1e-4) and torch.allclose(a.scores, b.scores, atol=1e-6)
    ca, cb = whole(pair), tiny(pair)
    assert torch.equal(ca.stage, cb.stage) and torch.allclose(ca.scores, cb.scores, atol=1e-6)


def test_area_crops_with_a_shared_integral_image_equal_a_fresh_one():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 30, 40, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [5.5, 2.0, 20.0, 25.0]])
    idx = torch.tensor([2, 0])
    ii = integral_image(x)
    assert ii.dtype == torch.float64 and ii.shape == (3 * 31 * 41, 3)
    for size in (24, 48):
        assert torch.equal(area_crops(x, idx, boxes, size, integral=ii), area_crops(x, idx, boxes, size))


def test_integral_image_is_the_zero_padded_double_cumulative_sum_with_and_without_gradient():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    ii = integral_image(x).view(2, 6, 8, 3)
    for n, r, q in [(0, 0, 4), (1, 5, 7), (0, 3, 2)]:
        assert torch.allclose(ii[n, r, q], x[n, :, :r, :q].double().sum((1, 2)))
    xg = x.clone().requires_grad_()
    with_grad = integral_image(xg)                                  # autograd path (no in-place)
    assert torch.equal(with_grad.detach(), ii.view(-1, 3))
    with_grad[-1].sum().backward()                                  # last corner = sum of image 1
    assert torch.equal(xg.grad[1], torch.ones(3, 5, 7)) and not xg.grad[0].any()


def test_blank_and_tiny_images_give_no_faces(model):
    det = model.detect(torch.full((2, 3, 64, 64), 0.5))
    assert all(len(d.boxes) == 0 and d.landmarks.shape == (0, 5, 2) for d in det)
    assert len(model.detect(torch.rand(3, 10, 10))[0].boxes) == 0  # smaller than any pyramid level
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    c = model(noise)                        # R-Net scores a window but passes none: O-Net gets nothing
    assert (c.stage == 1).any() and not (c.stage == 2).any()


def test_area_crops_equal_interpolate_area_of_the_clipped_crop():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 40, 50, generator=g)
    boxes = torch.tensor([[3.7, 5.2, 30.9, 33.1], [-4.0, -2.0, 60.0, 12.0], [10.0, 10.0, 14.0, 13.0]])
    idx = torch.tensor([0, 1, 1])
    got = area_crops(x, idx, boxes, 24)
    for k, (x1, y1, x2, y2) in enumerate([(3, 5, 30, 33), (1, 1, 50, 12), (10, 10, 14, 13)]):
        want = F.interpolate(x[idx[k]:idx[k] + 1, :, y1 - 1:y2, x1 - 1:x2], size=(24, 24), mode="area")
        assert torch.allclose(got[k:k + 1], want, atol=1e-5)
    w = torch.rand(24, 24, generator=g)                             # gradients agree too
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (area_crops(xa, idx[:1], boxes[:1], 24) * w).sum().backward()
    (F.interpolate(xb[:1, :, 4:33, 2:30], size=(24, 24), mode="area") * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)


def test_candidate_scores_give_gradients_on_a_patch_over_the_face(model, small_astronaut):
    x = small_astronaut.clone().requires_grad_(True)
    c = model.candidates(x, stages=("pnet", "rnet", "onet"))
    assert c.scores.requires_grad and set(c.stage.tolist()) == {0, 1, 2}
    assert len(c.boxes) == len(c.scores) == len(c.image_index) == len(c.regressed)
    on_face = box_iou(c.boxes, REFERENCE_BOX / 2)[:, 0] > 0.3
    for stage in (0, 1, 2):
        sel = on_face & (c.stage == stage)
        (grad,) = torch.autograd.grad(c.scores[sel].log().sum(), x, retain_graph=True)
        patch = grad[0, :, 50:65, 102:122]                              # eyes-nose region
        assert patch.abs().sum() > 0, f"stage {stage}: no gradient on the face patch"
        assert grad[0, :, 200:, :50].abs().sum() == 0                   # far from the selected windows


def test_onet_candidate_score_equals_the_detection_score(model, small_astronaut):
    det = model.detect(small_astronaut)[0]
    assert len(det.boxes) == 1
    c = model.candidates(small_astronaut, stages=("onet",))
    best = c.scores.argmax()
    assert torch.isclose(c.scores[best], det.scores[0], atol=1e-5)
    assert float(box_iou(c.regressed[best:best + 1], det.boxes)) > 0.95


def test_pnet_candidates_cover_every_pyramid_scale(model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    c = model.candidates(x)
    scales = model.scales(64, 64)
    side = [int(64 * s + 1) for s in scales]                       # reference pyramid level sizes
    cells = sum(2 * (math.ceil((n - 2) / 2) - 4) ** 2 for n in side)  # conv3, pool2 (ceil), conv3, conv3
    assert len(c.scores) == cells and (c.stage == 0).all()
    assert ((c.scores >= 0) & (c.scores <= 1)).all()


def test_bad_inputs_are_rejected(model):
    with pytest.raises(ValueError, match="channels"):
        model.detect(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="stages"):
        model.candidates(torch.rand(1, 3, 32, 32), stages=("qnet",))
    with pytest.raises(ValueError, match="thresholds"):
        MTCNN(thresholds=(0.6, 0.7), pretrained=False)
    with pytest.raises(LookupError, match="pnet.pt"):
        MTCNN(weights_dir="/nonexistent")
