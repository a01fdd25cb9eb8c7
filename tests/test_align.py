import numpy as np
import pytest

from groupmood.align import (SPHEREFACE_TEMPLATE, align_faces, similarity_transform, square_boxes,
                             square_crops)


def _dot_image(points: np.ndarray, shape=(400, 500)) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k, (x, y) in enumerate(points):
        mask = (xx - x) ** 2 + (yy - y) ** 2 <= 3.0 ** 2
        img[mask] = (40 * (k + 1), 255 - 40 * k, 200)
    return img


def _centroid(img: np.ndarray, colour) -> np.ndarray:
    d = np.abs(img.astype(int) - np.array(colour)).sum(axis=2)
    ys, xs = np.nonzero(d < 60)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.0, (0, 0)), (0.35, 2.2, (180, 90)),
                                               (-0.6, 1.7, (250, 160))])
def test_aligned_crop_puts_landmarks_on_template(angle, scale, shift):
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    pts = SPHEREFACE_TEMPLATE @ rot.T + np.array(shift)
    img = _dot_image(pts)
    crop = align_faces(img, pts[None])[0]
    assert crop.shape == (112, 96, 3)  # 112 high, 96 wide: not transposed
    for k, target in enumerate(SPHEREFACE_TEMPLATE):
        got = _centroid(crop, (40 * (k + 1), 255 - 40 * k, 200))
        assert np.abs(got - target).max() < 1.0, (k, got, target)


def test_similarity_is_least_squares_and_batched():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 300, (4, 5, 2))
    m = similarity_transform(src)
    assert m.shape == (4, 2, 3)
    for s, mk in zip(src, m):
        a = mk[:, :2]
        assert a[0, 0] == pytest.approx(a[1, 1]) and a[0, 1] == pytest.approx(-a[1, 0])
        np.testing.assert_allclose(mk, similarity_transform(s))
        base = np.linalg.norm(s @ a.T + mk[:, 2] - SPHEREFACE_TEMPLATE)
        for d in (np.array([[1e-3, 0, 0], [0, 1e-3, 0]]), np.array([[0, 0, 0.5], [0, 0, 0]])):
            assert np.linalg.norm(s @ (a + d[:, :2]).T + mk[:, 2] + d[:, 2] - SPHEREFACE_TEMPLATE) >= base


def test_real_face_aligned_from_mtcnn(detector, astronaut):
    face = detector.detect_one(astronaut)[0]
    crop = align_faces(astronaut, face.landmarks[None])[0]
    m = similarity_transform(face.landmarks)
    mapped = face.landmarks @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - SPHEREFACE_TEMPLATE).max() < 6.0
    assert crop.shape == (112, 96, 3) and crop.std() > 20


def test_square_crops_grey_48_and_edges():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 255
    boxes = np.array([[90, 10, 110, 50], [-20, -20, 30, 60], [190, 90, 260, 130]], dtype=float)
    sq = square_boxes(boxes)
    assert np.all(sq[:, 2] - sq[:, 0] == sq[:, 3] - sq[:, 1])
    assert sq[0].tolist() == [80, 10, 120, 50]
    crops = square_crops(img, boxes)
    assert crops.shape == (3, 48, 48) and crops.dtype == np.uint8
    assert crops[0, :, :20].max() < 10 and crops[0, :, 28:].min() > 245  # left dark, right bright
    assert square_crops(img, boxes, grey=False).shape == (3, 48, 48, 3)
    wide = square_boxes(boxes[:1], margin=0.5)[0]
    assert wide[2] - wide[0] == 60
    assert square_crops(img, np.zeros((0, 4))).shape == (0, 48, 48)
    assert align_faces(img, np.zeros((0, 5, 2))).shape == (0, 112, 96, 3)
