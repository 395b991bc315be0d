"""Offline face data: the astronaut, LFW crops, composites split by identity, WIDER FACE annotations."""
import pytest
import torch

from patchbench.data.faces import (ASTRONAUT_IDENTITY, composite_faces, lfw_faces, load_wider_annotations,
                                   real_faces)


def test_real_faces_is_the_astronaut_with_one_face_box():
    x, boxes, ids = real_faces()
    assert x.shape == (1, 3, 512, 512) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert boxes[0].shape == (1, 4) and ids[0].tolist() == [ASTRONAUT_IDENTITY]
    x1, y1, x2, y2 = boxes[0][0].tolist()
    assert 80 <= x2 - x1 <= 110 and 95 <= y2 - y1 <= 125                # a ~100 px face


def test_lfw_faces_are_100_crops_each_its_own_identity():
    crops, ids = lfw_faces()
    assert crops.shape == (100, 3, 25, 25) and ids.tolist() == list(range(100))
    assert torch.equal(crops[:, 0], crops[:, 1])                       # grey repeated to RGB


def test_composites_are_reproducible_and_boxes_show_the_pasted_faces():
    a = composite_faces(4, size=(96, 128), scale_range=(24, 40), generator=3)
    b = composite_faces(4, size=(96, 128), scale_range=(24, 40), generator=3)
    assert a.images.shape == (4, 3, 96, 128) and torch.equal(a.images, b.images)
    c = composite_faces(4, size=(96, 128), scale_range=(24, 40), generator=4)
    assert not torch.equal(a.images, c.images)
    for boxes, ids in zip(a.boxes, a.identities):
        assert 1 <= len(boxes) <= 3 and len(ids) == len(boxes)
        h = boxes[:, 3] - boxes[:, 1]
        assert ((h >= 24) & (h <= 40)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        for i in range(len(boxes)):                                     # pasted faces never overlap
            for j in range(i + 1, len(boxes)):
                lo = torch.maximum(boxes[i, :2], boxes[j, :2])
                hi = torch.minimum(boxes[i, 2:], boxes[j, 2:])
                assert ((hi - lo) <= 0).any()


def test_a_pasted_lfw_face_is_the_upscaled_crop():
    crops, _ = lfw_faces()
    faces = ([crops[3]], torch.tensor([3]))                             # id 3 → test split
    d = composite_faces(1, size=(64, 64), faces=faces, scale_range=(25, 25), max_faces=1,
                        generator=0, split="test")
    x1, y1, x2, y2 = (int(v) for v in d.boxes[0][0])
    assert torch.allclose(d.images[0, :, y1:y2, x1:x2], crops[3], atol=1e-6)


def test_train_and_test_splits_share_no_face_identity():
    tr = torch.cat(composite_faces(24, size=(128, 128), scale_range=(20, 40), generator=0).identities)
    te = torch.cat(composite_faces(24, size=(128, 128), scale_range=(20, 40), generator=0,
                                   split="test").identities)
    assert (te % 4 == 3).all() and (tr % 4 != 3).all()
    assert not set(tr.tolist()) & set(te.tolist())


def test_composite_input_errors():
    with pytest.raises(ValueError, match="split"):
        composite_faces(1, split="val")
    with pytest.raises(ValueError, match="scale_range"):
        composite_faces(1, size=(64, 64), scale_range=(48, 96))
    with pytest.raises(ValueError, match="backgrounds"):
        composite_faces(1, backgrounds=["astronaut"])


WIDER = """0--Parade/0_Parade_marchingband_1_849.jpg
1
449 330 122 149 0 0 0 0 0 0
0--Parade/0_Parade_Parade_0_904.jpg
0
0 0 0 0 0 0 0 0 0 0
12--Group/12_Group_Group_12_Group_Group_12_10.jpg
3
10 20 30 40 2 0 0 0 1 0
5 5 0 12 0 0 0 1 0 0
100 200 8 9 1 1 0 0 2 1
"""


def test_wider_loader_parses_boxes_attributes_and_skips_zero_size(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text(WIDER)
    recs = load_wider_annotations(p)
    assert [r.filename for r in recs] == ["0--Parade/0_Parade_marchingband_1_849.jpg",
                                          "0--Parade/0_Parade_Parade_0_904.jpg",
                                          "12--Group/12_Group_Group_12_Group_Group_12_10.jpg"]
    assert recs[0].boxes.tolist() == [[449, 330, 571, 479]]            # x y w h → x1 y1 x2 y2
    assert recs[1].boxes.shape == (0, 4) and recs[1].skipped == 0       # placeholder line consumed
    assert recs[2].boxes.tolist() == [[10, 20, 40, 60], [100, 200, 108, 209]]
    assert recs[2].skipped == 1
    assert recs[2].attributes.tolist() == [[2, 0, 0, 0, 1, 0], [1, 1, 0, 0, 2, 1]]


def test_wider_loader_names_the_malformed_line(tmp_path):
    p = tmp_path / "bad.txt"
    lines = WIDER.splitlines()
    lines[10] = "100 200 8 nine 1 1 0 0 2 1"
    p.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"bad\.txt:11: expected 10 integers"):
        load_wider_annotations(p)
    p.write_text("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"bad\.txt:4: unexpected end of file"):
        load_wider_annotations(p)
    p.write_text("a.jpg\ntwo\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected 1 integers"):
        load_wider_annotations(p)
