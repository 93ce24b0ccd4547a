"""Cameras in the Portrait4D convention.

Conventions (see ``shared/design/portrait4d-official.md`` section 4):

* A camera *label* is a ``(B, 25)`` tensor: the row-major ``cam2world`` 4x4 matrix (16 numbers) followed by
  the row-major 3x3 intrinsics (9 numbers), normalised by the image size (``cx = cy = 0.5``).
* Camera space is OpenGL-like: the camera looks down ``-z``, ``x`` points right, ``y`` points up. A frontal
  camera on the ``+z`` axis looking at the origin therefore has an identity rotation.
* Portrait4D uses a 12 degree field of view, i.e. a normalised focal length of ``1 / (2 tan 6deg) ~ 4.757``.
* At inference the camera is fixed: identity rotation, translation ``(0, 0.01, 4.2)``.

All functions are batched and differentiable where that makes sense.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "INFERENCE_TRANSLATION",
    "PORTRAIT4D_FOV_DEG",
    "cam2world_from_forward",
    "camera_z",
    "eg3d_focal_from_fov",
    "focal_from_fov",
    "fov_from_focal",
    "inference_cam2world",
    "inference_label",
    "invert_rigid",
    "lookat_cam2world",
    "make_intrinsics",
    "make_label",
    "orbit_labels",
    "sample_lookat_cam2world",
    "split_label",
    "view_label",
]

PORTRAIT4D_FOV_DEG: float = 12.0
"""Full field of view (degrees) of the Portrait4D data and inference camera."""

INFERENCE_TRANSLATION: tuple[float, float, float] = (0.0, 0.01, 4.2)
"""Camera position of the fixed inference camera (identity rotation)."""

ScalarOrTensor = float | Tensor


# ----------------------------------------------------------------------------------------------------------
# Intrinsics and field of view


def focal_from_fov(fov_deg: ScalarOrTensor) -> ScalarOrTensor:
    """Normalised focal length ``1 / (2 tan(fov / 2))`` for a full field of view in degrees.

    This is the convention of the Portrait4D data (``bfm2flame_simplified.get_intrinsics`` and the FLAME
    fitting scripts). ``fov_deg`` may be a float or a tensor of any shape; the result has the same type/shape.
    """
    if isinstance(fov_deg, Tensor):
        return 1.0 / (2.0 * torch.tan(torch.deg2rad(fov_deg) / 2.0))
    return 1.0 / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def fov_from_focal(focal: ScalarOrTensor) -> ScalarOrTensor:
    """Inverse of :func:`focal_from_fov`: full field of view in degrees from a normalised focal length."""
    if isinstance(focal, Tensor):
        return torch.rad2deg(2.0 * torch.atan(1.0 / (2.0 * focal)))
    return math.degrees(2.0 * math.atan(1.0 / (2.0 * focal)))


def eg3d_focal_from_fov(fov_deg: float) -> float:
    """Focal length as computed by the upstream ``camera_utils.FOV_to_intrinsics`` (an EG3D heritage).

    It uses ``3.14159`` for pi and ``1.414`` instead of 2, so "18.837 degrees" gives 4.2647. Portrait4D's
    data and inference never use it (the intrinsics come from the labels); it is kept for parity with
    upstream visualisation code only.
    """
    return float(1.0 / (math.tan(fov_deg * 3.14159 / 360.0) * 1.414))


def make_intrinsics(
    focal: ScalarOrTensor,
    batch_size: int = 1,
    cx: float = 0.5,
    cy: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised pinhole intrinsics.

    Args:
        focal: normalised focal length, a float or a ``(B,)`` tensor (then ``batch_size`` is ignored).
        batch_size: ``B`` when ``focal`` is a float.
        cx, cy: normalised principal point.

    Returns:
        ``(B, 3, 3)`` matrices ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]``.
    """
    if isinstance(focal, Tensor):
        f = focal.reshape(-1).to(dtype=dtype, device=device if device is not None else focal.device)
    else:
        f = torch.full((batch_size,), float(focal), dtype=dtype, device=device)
    k = torch.zeros(f.shape[0], 3, 3, dtype=f.dtype, device=f.device)
    k[:, 0, 0] = f
    k[:, 1, 1] = f
    k[:, 0, 2] = cx
    k[:, 1, 2] = cy
    k[:, 2, 2] = 1.0
    return k


# ----------------------------------------------------------------------------------------------------------
# Labels


def make_label(cam2world: Tensor, intrinsics: Tensor) -> Tensor:
    """Pack ``(B, 4, 4)`` cam2world and ``(B, 3, 3)`` normalised intrinsics into a ``(B, 25)`` label."""
    b = cam2world.shape[0]
    return torch.cat([cam2world.reshape(b, 16), intrinsics.reshape(b, 9).to(cam2world)], dim=-1)


def split_label(label: Tensor) -> tuple[Tensor, Tensor]:
    """Unpack a ``(..., 25)`` label (extra trailing entries, e.g. FLAME params, are ignored).

    Returns:
        ``cam2world`` of shape ``(N, 4, 4)`` and ``intrinsics`` of shape ``(N, 3, 3)`` with ``N`` the
        product of the leading dimensions.
    """
    flat = label.reshape(-1, label.shape[-1])
    return flat[:, :16].reshape(-1, 4, 4), flat[:, 16:25].reshape(-1, 3, 3)


def invert_rigid(matrix: Tensor) -> Tensor:
    """Invert ``(B, 4, 4)`` rigid transforms as ``[R^T, -R^T t]`` (cam2world <-> world2cam)."""
    rot_t = matrix[:, :3, :3].transpose(1, 2)
    out = torch.eye(4, dtype=matrix.dtype, device=matrix.device).repeat(matrix.shape[0], 1, 1)
    out[:, :3, :3] = rot_t
    out[:, :3, 3:] = -rot_t @ matrix[:, :3, 3:]
    return out


def camera_z(cam2world: Tensor) -> Tensor:
    """``(B,)`` z of the world origin in camera space (negative in front of the camera).

    Portrait4D's ``'auto-plane'`` depth range is ``|camera_z| -/+ box_warp / 2``.
    """
    return invert_rigid(cam2world)[:, 2, 3]


# ----------------------------------------------------------------------------------------------------------
# Poses


def _normalize(v: Tensor) -> Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)


def cam2world_from_forward(forward: Tensor, origin: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices from viewing directions and positions (no roll unless ``up`` is tilted).

    Args:
        forward: ``(B, 3)`` viewing directions (need not be unit length).
        origin: ``(B, 3)`` camera positions.
        up: ``(B, 3)`` approximate up vectors; world ``+y`` when ``None``.

    Returns:
        ``(B, 4, 4)``; the rotation columns are ``(right, up, -forward)`` in the camera convention above.
    """
    forward = _normalize(forward)
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    down = _normalize(torch.cross(forward, right, dim=-1))  # points to camera -y
    out = torch.eye(4, dtype=forward.dtype, device=forward.device).repeat(forward.shape[0], 1, 1)
    out[:, :3, :3] = torch.stack((right, -down, -forward), dim=-1)
    out[:, :3, 3] = origin
    return out


def _as_column(x: ScalarOrTensor, batch_size: int, device: torch.device | str | None) -> Tensor:
    """A float or tensor as a ``(B, 1)`` float tensor."""
    t = torch.as_tensor(x, dtype=torch.float32, device=device)
    return t.reshape(-1, 1).expand(batch_size, 1) if t.numel() == 1 else t.reshape(batch_size, 1)


def lookat_cam2world(
    yaw: ScalarOrTensor,
    pitch: ScalarOrTensor,
    lookat: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    radius: ScalarOrTensor = 1.0,
    roll: ScalarOrTensor = 0.0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Deterministic version of upstream ``LookAtPoseSampler.sample`` (zero standard deviations).

    The camera sits on a sphere of ``radius`` around the *world origin* (not around ``lookat``) and looks
    at ``lookat``. ``yaw`` is the azimuth around ``+y`` and ``pitch`` the polar angle from ``+y`` (radians);
    ``yaw = pitch = pi/2`` puts the camera on ``+z``. ``roll`` rotates the up vector about the view axis.

    Args:
        yaw, pitch, radius, roll: floats or ``(B,)``/``(B, 1)`` tensors.
        lookat: ``(3,)`` or ``(B, 3)``.
        batch_size: ``B``; inferred from tensor arguments when ``None``.

    Returns:
        ``(B, 4, 4)`` cam2world matrices.
    """
    if batch_size is None:
        sizes = [x.numel() for x in (yaw, pitch, radius, roll) if isinstance(x, Tensor)]
        if isinstance(lookat, Tensor) and lookat.dim() == 2:
            sizes.append(lookat.shape[0])
        batch_size = max(sizes, default=1)
    h = _as_column(yaw, batch_size, device)
    dev = h.device
    v = _as_column(pitch, batch_size, dev).clamp(1e-5, math.pi - 1e-5)
    r = _as_column(radius, batch_size, dev)
    rl = _as_column(roll, batch_size, dev)
    target = torch.as_tensor(lookat, dtype=torch.float32, device=dev)
    return _lookat_from_angles(h, v, target, r, rl)


def _lookat_from_angles(theta: Tensor, v: Tensor, target: Tensor, radius: Tensor, roll: Tensor) -> Tensor:
    """Core of the LookAt sampler; every argument is ``(B, 1)`` except ``target`` ``(3,)``/``(B, 3)``."""
    phi = torch.arccos(1 - 2 * (v / math.pi)) + math.pi
    origin = torch.cat(
        [
            radius * torch.sin(phi) * torch.cos(math.pi - theta),
            -radius * torch.cos(phi),
            -radius * torch.sin(phi) * torch.sin(math.pi - theta),
        ],
        dim=-1,
    )
    forward = _normalize(target - origin)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    up = _normalize(torch.cross(right, forward, dim=-1))
    up = up * torch.cos(roll) + right * torch.sin(roll)
    return cam2world_from_forward(forward, origin, up=up)


def sample_lookat_cam2world(
    yaw_mean: ScalarOrTensor,
    pitch_mean: ScalarOrTensor,
    lookat: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    yaw_std: float = 0.0,
    pitch_std: float = 0.0,
    roll_mean: ScalarOrTensor = 0.0,
    roll_std: float = 0.0,
    radius: ScalarOrTensor = 1.0,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian LookAt pose sampler (upstream ``LookAtPoseSampler.sample``), same draw order: yaw, pitch, roll.

    Returns:
        ``(batch_size, 4, 4)`` cam2world matrices.
    """

    def draw(mean: ScalarOrTensor, std: float) -> Tensor:
        noise = torch.randn((batch_size, 1), device=device, generator=generator)
        return noise * std + _as_column(mean, batch_size, device)

    h = draw(yaw_mean, yaw_std)
    v = draw(pitch_mean, pitch_std).clamp(1e-5, math.pi - 1e-5)
    rl = draw(roll_mean, roll_std)
    target = torch.as_tensor(lookat, dtype=torch.float32, device=h.device)
    return _lookat_from_angles(h, v, target, _as_column(radius, batch_size, h.device), rl)


# ----------------------------------------------------------------------------------------------------------
# Fixed and orbit cameras


def inference_cam2world(batch_size: int = 1, device: torch.device | str | None = None) -> Tensor:
    """``(B, 4, 4)`` fixed Portrait4D inference extrinsics: identity rotation, translation (0, 0.01, 4.2)."""
    m = torch.eye(4, device=device).repeat(batch_size, 1, 1)
    m[:, :3, 3] = torch.tensor(INFERENCE_TRANSLATION, device=device)
    return m


def inference_label(
    batch_size: int = 1, fov_deg: float = PORTRAIT4D_FOV_DEG, device: torch.device | str | None = None
) -> Tensor:
    """``(B, 25)`` label of the fixed inference camera with the 12 degree intrinsics."""
    k = make_intrinsics(focal_from_fov(fov_deg), batch_size, device=device)
    return make_label(inference_cam2world(batch_size, device), k)


def orbit_labels(
    num_frames: int,
    yaw_range: float = 0.35,
    pitch_range: float = 0.15,
    radius: float = INFERENCE_TRANSLATION[2],
    lookat: Sequence[float] = (0.0, INFERENCE_TRANSLATION[1], 0.0),
    fov_deg: float = PORTRAIT4D_FOV_DEG,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(num_frames, 25)`` labels of a closed elliptic orbit for novel-view videos (not an upstream API).

    Frame ``i`` has yaw ``pi/2 + yaw_range sin(2 pi i / n)`` and pitch ``pi/2 + pitch_range
    cos(2 pi i / n)``; the camera stays at ``radius`` from the origin and looks at ``lookat``.
    """
    t = torch.arange(num_frames, dtype=torch.float32, device=device) / max(num_frames, 1)
    yaw = math.pi / 2 + yaw_range * torch.sin(2 * math.pi * t)
    pitch = math.pi / 2 + pitch_range * torch.cos(2 * math.pi * t)
    c2w = lookat_cam2world(yaw, pitch, lookat, radius, batch_size=num_frames, device=device)
    k = make_intrinsics(focal_from_fov(fov_deg), num_frames, device=device)
    return make_label(c2w, k)


def view_label(yaw_deg: float, pitch_deg: float, fov_deg: float = PORTRAIT4D_FOV_DEG,
               device: torch.device | str | None = None) -> Tensor:
    """``(1, 25)`` label of a camera looking at the head from ``yaw_deg`` (+: from the person's right) and
    ``pitch_deg`` (+: from above), at the inference camera's distance and field of view; ``(0, 0)`` is the
    fixed inference camera (:func:`inference_label`) to within 1e-2."""
    yaw = math.pi / 2 + math.radians(float(yaw_deg))
    polar = math.pi / 2 - math.radians(float(pitch_deg))
    c2w = lookat_cam2world(yaw, polar, (0.0, INFERENCE_TRANSLATION[1], 0.0), INFERENCE_TRANSLATION[2], batch_size=1,
                           device=device)
    return make_label(c2w, make_intrinsics(focal_from_fov(fov_deg), 1, device=device))
