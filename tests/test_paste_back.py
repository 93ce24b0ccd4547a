"""Paste-back (avatar.pipelines.paste_back): the crop goes back where it came from in the photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar.errors import InputError
from avatar.face.geometry import estimate_align_params, transform_landmarks, warp_to_aligned
from avatar.pipelines.paste_back import PasteBack, crop_to_photo_matrix, feather_mask


def _photo(h: int = 600, w: int = 460) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], -1)
    return np.clip(base + 400 * noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def align():  # noqa: ANN201
    five = np.array([[190.0, 260.0], [270.0, 262.0], [231.0, 305.0], [198.0, 350.0], [262.0, 352.0]])
    return estimate_align_params(five, (460, 600))


def test_matrix_is_the_inverse_of_the_landmark_transform(align) -> None:  # noqa: ANN001
    points = np.array([[10.0, 20.0], [300.5, 100.25], [511.0, 0.0]])
    to_photo = crop_to_photo_matrix(align)
    photo_points = points @ to_photo[:, :2].T + to_photo[:, 2]
    np.testing.assert_allclose(transform_landmarks(photo_points, align), points, atol=1e-6)


def test_feather_mask_ramps_from_the_border_and_is_one_inside() -> None:
    mask = feather_mask(100, 0.1)
    assert mask[50, 50] == 1.0 and mask[0, 50] < 0.01 and mask[5, 50] == pytest.approx(0.55 * 0.55 * (3 - 1.1))
    np.testing.assert_array_equal(mask, mask.T)
    assert (feather_mask(16, 0.0) == 1).all()
    with pytest.raises(InputError, match="feather must be between 0 and 0.5"):
        feather_mask(16, 0.7)


def test_pasting_the_photos_own_crop_gives_the_photo_back(align) -> None:  # noqa: ANN001
    photo = _photo()
    crop = warp_to_aligned(photo, align)
    paste = PasteBack(photo, align)
    out = paste(crop)
    assert out.shape == photo.shape and out.dtype == np.uint8
    inside = paste.alpha[..., 0] > 0.999
    assert inside.sum() > 40_000
    diff = np.abs(out.astype(np.int16) - photo.astype(np.int16))
    assert diff[inside].mean() < 2.0  # two bilinear resamplings of a smooth photo
    x0, y0, x1, y1 = paste.box
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (diff[outside] == 0).all()  # the photo outside the crop is untouched
    # a frame of another size (a 64x64 tiny model) is resized to the crop first; a grey frame shows where
    grey = paste(np.full((64, 64, 3), 128, np.uint8))
    assert np.abs(grey[inside].astype(int) - 128).max() <= 1


def test_paste_back_refuses_what_does_not_fit(align) -> None:  # noqa: ANN001
    photo = _photo()
    with pytest.raises(InputError, match="made from an aligned"):
        PasteBack(photo, None)
    with pytest.raises(InputError, match="give the photo the avatar was made from"):
        PasteBack(photo[:500], align)
    with pytest.raises(InputError, match="square"):
        PasteBack(photo, align)(np.zeros((10, 12, 3), np.uint8))


def test_cli_reenact_paste_back_writes_frames_of_the_photos_size(tmp_path, shared_media, capsys) -> None:  # noqa: ANN001
    from avatar.cli import main
    from avatar.face.mediapipe_face import mediapipe_available
    from avatar.io import VideoReader, load_image

    if not mediapipe_available():  # the random detector's crop may cover the whole photo
        pytest.skip("needs the [face] extra for a real crop")
    folder = tmp_path / "tiny"
    assert main(["tiny", str(folder), "--preprocess", "mediapipe"]) == 0
    photo = shared_media / "portraits" / "wild" / "public_domain" / "obama.jpg"
    video = shared_media / "videos" / "talk1.mp4"
    out = tmp_path / "pasted.mp4"
    assert main(["reenact", str(photo), str(video), "-o", str(out), "--model", str(folder), "--device", "cpu",
                 "--max-frames", "3", "--paste-back"]) == 0
    frames = list(VideoReader(out))
    image = load_image(photo)
    h, w = image.shape[:2]
    assert len(frames) == 3 and frames[0].shape == (h + h % 2, w + w % 2, 3)
    # the photo's corner, far from the face, is the photo (up to video compression)
    corner = np.abs(frames[0][:40, :40].astype(int) - image[:40, :40].astype(int)).mean()
    assert corner < 8
    assert main(["reenact", str(photo), str(video), "-o", str(out), "--model", str(folder), "--paste-back",
                 "--side-by-side"]) == 1
    assert "--paste-back puts the result back into the original photo" in capsys.readouterr().err
