"""Registry of the upstream assets: which files exist, where they live, what they are, who needs them.

Facts come from the official Hub repo ``bEijuuu/Portrait4D`` (tagged MIT) and the official code
``YuDeng/Portrait-4D``. Sizes marked ``approx`` are the Hub page's rounded figures; exact sizes and SHA-256
digests are given where they are known (GitHub-hosted files, read from the repository at the pinned commit).
For Hub files the exact digest is taken from the Hub's own LFS metadata at download time. The MODNet matting
checkpoint (evaluation only) is published on Google Drive by ``ZHKKKe/MODNet`` and is taken from a local folder;
so is GOHA's released checkpoint (``NVlabs/GOHA`` at ``102abbf``, model id ``goha``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "HUB_REPO",
    "HUB_REVISION",
    "GITHUB_REPO",
    "GITHUB_COMMIT",
    "MODNET_REPO",
    "MODNET_COMMIT",
    "MODNET_DRIVE_FOLDER",
    "GOHA_REPO",
    "GOHA_COMMIT",
    "GOHA_CHECKPOINT_URL",
    "UpstreamFile",
    "ModelSpec",
    "FILES",
    "MODELS",
    "DEFAULT_MODEL_ID",
    "get_model",
    "get_file",
    "model_class",
    "pipeline_class",
    "pipeline_model_ids",
]

HUB_REPO = "bEijuuu/Portrait4D"
# Latest commit of the Hub repo seen (2024-04-29, "Upload ffhq_all_shape_n_motion_bfm_params.npy").
HUB_REVISION = "a00d8a3b0fbbabff68414156f1e260f0600c9654"
GITHUB_REPO = "YuDeng/Portrait-4D"
GITHUB_COMMIT = "da5eec6fa3dfca4d7c8f08daa46326f2de8244db"
# MODNet (portrait matting for the evaluation's background removal): code on GitHub, weights on Google Drive only.
MODNET_REPO = "ZHKKKe/MODNet"
MODNET_COMMIT = "28165a451e4610c9d77cfdf925a94610bb2810fb"  # latest commit seen (2022-07-30)
MODNET_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1umYmlCulvIFNaqPjwod1SayFmSRHziyR"

LICENCE_PORTRAIT4D = (
    "Hub repo tagged MIT. The pickle also embeds EG3D-derived source under the NVIDIA Source Code License "
    "(non-commercial); that source is never executed nor redistributed by this toolkit."
)
LICENCE_FLAME = (
    "FLAME model licence (MPI-IS): non-commercial scientific research only; register at flame.is.tue.mpg.de "
    "to accept the terms. Re-hosted on the Portrait4D Hub repo."
)
LICENCE_BFM = "Basel Face Model licence (University of Basel): non-commercial research; accept it at faces.dmi.unibas.ch."
LICENCE_ARCFACE = "InsightFace/ArcFace model weights: non-commercial research use only."
LICENCE_PDFGC = "PD-FGC (Dorniwang/PD-FGC-inference) weights: research use; see the upstream repository."
LICENCE_MIT_UPSTREAM = "MIT (upstream project licence)."
LICENCE_MODNET = "Apache-2.0 (ZHKKKe/MODNet: code, models and demos)."
# GOHA (NVlabs/GOHA, NeurIPS 2023): code under the NVIDIA Source Code License (non-commercial; this toolkit never
# runs nor ships it: its own port reads the weights), the released weights on Google Drive only, CC BY-NC-SA 4.0.
GOHA_REPO = "NVlabs/GOHA"
GOHA_COMMIT = "102abbf39cae76e0259b25412c1d2e8996e19192"  # "release", 2023-12-10 (HEAD seen)
GOHA_CHECKPOINT_URL = "https://drive.google.com/file/d/1Fiz_AddgbAinh2ZsRn3MwAR0Qcl4o60V"
LICENCE_GOHA = (
    "Pre-trained GOHA model: CC BY-NC-SA 4.0 (non-commercial, share-alike; NVlabs/GOHA README). GOHA's source code is "
    "under the NVIDIA Source Code License (non-commercial research or evaluation only); this toolkit never runs nor "
    "redistributes it. The checkpoint embeds GFPGAN v1.3 (Apache-2.0, TencentARC) and face-parsing.PyTorch (MIT) "
    "weights, fine-tuned."
)


@dataclass(frozen=True)
class UpstreamFile:
    """One upstream file.

    Attributes:
        key: short stable name used in the cache and in model specs.
        path: path inside the Hub repo (``source='hub'``) or the GitHub repo (``source='github'``); for
            ``source='gdrive'`` (a file published only in a Google Drive folder, which cannot be fetched
            automatically: take it with ``avatar download --file KEY --from-dir DIR``) the path it has in an
            official checkout of :attr:`repo`.
        fmt: reader format (see :mod:`avatar.hub.formats`): ``persistence-pickle``, ``chumpy-pickle``,
            ``numpy-pickle``, ``npy``, ``torch``, ``torchscript``, ``text`` or ``raw`` (copied as is).
        size: expected size in bytes; exact when ``size_exact`` else the Hub's rounded figure.
        sha256: expected SHA-256 when known (full digest), or a known prefix.
        licence: licence note shown to the user.
        description: what it is and who uses it.
        network: for persistence pickles, the network to extract (EG3D stores ``G``, ``D``, ``G_ema``).
    """

    key: str
    path: str
    fmt: str
    size: int | None
    licence: str
    description: str
    source: str = "hub"
    size_exact: bool = False
    sha256: str | None = None
    network: str | None = None
    release: tuple[str, str, str] | None = None
    """For ``source='release'`` (a GitHub release asset of another project): ``(repo, tag, download URL)``; for
    ``source='url'`` (a file another project's code downloads from a fixed address, fetched the same way; no digest
    is pinned when none is published): ``(repo, commit where the address was read, URL)``."""
    member: str | None = None
    """For a file published only inside a zip archive (``release``'s URL names the archive): the file's name in the
    archive (matched on its base name, at any depth). The archive is downloaded once and the member extracted."""

    @property
    def repo(self) -> str:
        if self.release is not None:
            return self.release[0]
        return {"hub": HUB_REPO, "gdrive": MODNET_REPO}.get(self.source, GITHUB_REPO)

    @property
    def revision(self) -> str:
        if self.release is not None:
            return self.release[1]
        return {"hub": HUB_REVISION, "gdrive": MODNET_COMMIT}.get(self.source, GITHUB_COMMIT)

    @property
    def url(self) -> str:
        if self.release is not None:
            return self.release[2]
        if self.source == "gdrive":
            return MODNET_DRIVE_FOLDER
        if self.source == "hub":
            return f"https://huggingface.co/{HUB_REPO}/resolve/{HUB_REVISION}/{self.path}"
        return f"https://raw.githubusercontent.com/{GITHUB_REPO}/{GITHUB_COMMIT}/{self.path}"


_MB = 1_000_000
_GB = 1_000_000_000


def _hub(key: str, path: str, fmt: str, size: int | None, licence: str, description: str, **kw: object) -> UpstreamFile:
    return UpstreamFile(key=key, path=path, fmt=fmt, size=size, licence=licence, description=description, **kw)


def _gh(key: str, path: str, fmt: str, size: int, sha256: str, licence: str, description: str) -> UpstreamFile:
    return UpstreamFile(
        key=key, path=path, fmt=fmt, size=size, size_exact=True, sha256=sha256, licence=licence,
        description=description, source="github",
    )


_FILE_LIST: list[UpstreamFile] = [
    # --- reconstructors and generator (EG3D persistence pickles) ---------------------------------------
    _hub("portrait4d-v2-vfhq512", "portrait4d-v2-vfhq512.pkl", "persistence-pickle", None, LICENCE_PORTRAIT4D,
         "Portrait4D-v2 reconstructor, fine-tuned from the static model on VFHQ (G_ema).", network="G_ema"),
    _hub("portrait4d-genhead512", "portrait4d-genhead512.pkl", "persistence-pickle", int(1.99 * _GB),
         LICENCE_PORTRAIT4D, "Portrait4D (v1) reconstructor trained on GenHead synthetic data (G_ema).",
         sha256="f5a9a094", network="G_ema"),
    _hub("portrait4d-static-genhead512", "portrait4d-static-genhead512.pkl", "persistence-pickle",
         int(1.99 * _GB), LICENCE_PORTRAIT4D,
         "Static Portrait4D (no motion cross-attention), v2's initialisation and frozen G_fix (G_ema).",
         sha256="552b7ff8", network="G_ema"),
    _hub("genhead-ffhq512", "genhead-ffhq512.pkl", "persistence-pickle", None, LICENCE_PORTRAIT4D,
         "GenHead: part-wise animatable 3D head generator on FFHQ (G_ema).", network="G_ema"),
    # the same pickles hold the discriminator of the training run (EG3D snapshots: G, D, G_ema); one download,
    # one conversion per network
    _hub("portrait4d-v2-vfhq512-D", "portrait4d-v2-vfhq512.pkl", "persistence-pickle", None, LICENCE_PORTRAIT4D,
         "Portrait4D-v2's dual discriminator (DualDiscriminatorDeform, D of the same snapshot).", network="D"),
    _hub("portrait4d-genhead512-D", "portrait4d-genhead512.pkl", "persistence-pickle", int(1.99 * _GB),
         LICENCE_PORTRAIT4D, "Portrait4D (v1)'s dual discriminator (D of the same snapshot).", sha256="f5a9a094",
         network="D"),
    _hub("genhead-ffhq512-D", "genhead-ffhq512.pkl", "persistence-pickle", None, LICENCE_PORTRAIT4D,
         "GenHead's dual discriminator (image, raw image, uv, seg): resume or fine-tune GenHead training.",
         network="D"),
    _hub("portrait4d-static-genhead512-D", "portrait4d-static-genhead512.pkl", "persistence-pickle",
         int(1.99 * _GB), LICENCE_PORTRAIT4D,
         "Static Portrait4D's dual discriminator: where v2's training starts D (D of the same snapshot).",
         sha256="552b7ff8", network="D"),
    # --- FLAME (models/FLAME on the Hub, the rest in the GitHub repo) ---------------------------------
    _hub("flame-generic-model", "models/FLAME/geometry/generic_model.pkl", "chumpy-pickle", 53 * _MB,
         LICENCE_FLAME, "FLAME 2020 generic model (chumpy pickle): template, shape/expression/pose bases, "
         "joint regressor, skinning weights. Drives the head-pose deformation field."),
    _hub("flame-masks", "models/FLAME/mask/FLAME_masks.pkl", "numpy-pickle", 96_100, LICENCE_FLAME,
         "FLAME vertex masks per face region (face, eyes, lips, ...)."),
    _gh("flame-ca-shape", "portrait4d/models/FLAME/ca_shape.txt", "text", 2500,
        "913c0823c09df32fe576af50f7559f5e9eb93b786b33bf2dbb2438168b9b51a9", LICENCE_MIT_UPSTREAM,
        "Canonical FLAME shape parameters of the deformation field."),
    _gh("flame-ca-exp", "portrait4d/models/FLAME/ca_exp.txt", "text", 1250,
        "acb214afb8725181ffddc2e700602724eee0ff4839735f62d7c5a58bd5728786", LICENCE_MIT_UPSTREAM,
        "Canonical FLAME expression parameters of the deformation field."),
    _gh("flame-ca-pose", "portrait4d/models/FLAME/ca_pose.txt", "text", 150,
        "d125bbdd685508b6d762648aaeacc67d07360f59467f4f1a2f8aee30c8136a76", LICENCE_MIT_UPSTREAM,
        "Canonical FLAME pose parameters of the deformation field."),
    _gh("flame-simplify-barycentric", "portrait4d/models/FLAME/simplify_baricentric2.npy", "npy", 617939,
        "a51165cac9a371fcf1165b3c03b50b90a19fd2b56e2ffedee4c1a0125c5dcfa2", LICENCE_MIT_UPSTREAM,
        "Simplified FLAME mesh used for the surface deformation field (object .npy)."),
    _gh("flame-addition-info", "portrait4d/models/FLAME/flame_addition_info_new_smallface.npy", "npy", 497332,
        "fc5e39b2ebf3be03fafd36c5c609c2c44d5c0af4b28107661a9681ad7eb1dc6d", LICENCE_MIT_UPSTREAM,
        "Small-face region information of the deformation field (object .npy)."),
    _gh("flame-landmark-embedding", "portrait4d/models/FLAME/geometry/landmark_embedding_with_eyes.npy", "npy",
        32187, "a9050103cc98d5505beadca2f9b101acce9a78ebdd5d10cb001fa164ab7d309b", LICENCE_FLAME,
        "FLAME landmark embedding (68 + eyes), object .npy."),
    # --- motion encoder and loss networks -------------------------------------------------------------
    _hub("pdfgc-motion", "models/pdfgc/weights/motion_model.pth", "torch", None, LICENCE_PDFGC,
         "PD-FGC FanEncoder: the 548-d motion embedding (eye 6 + emotion 30 + mouth 512)."),
    _hub("arcface-r18", "models/arcface/ms1mv3_arcface_r18_fp16/backbone.pth", "torch", None, LICENCE_ARCFACE,
         "ArcFace iresnet18 (ms1mv3): identity loss in training."),
    _hub("lpips-alex", "models/lpips/weights/v0.1/alex.pth", "torch", None, "BSD-2-Clause (LPIPS).",
         "LPIPS v0.1 linear heads for AlexNet."),
    _hub("lpips-vgg", "models/lpips/weights/v0.1/vgg.pth", "torch", None, "BSD-2-Clause (LPIPS).",
         "LPIPS v0.1 linear heads for VGG (training loss)."),
    # --- preprocessing (data_preprocess/assets on the Hub) --------------------------------------------
    _hub("retinaface-r50", "data_preprocess/assets/facedetect/retinaface/Resnet50_Final.pth", "torch", None,
         LICENCE_MIT_UPSTREAM, "RetinaFace ResNet-50 face detector."),
    _hub("h3r-hrnet-w18-wflw", "data_preprocess/assets/hrnet_w18_wflw/h3r/model.pth", "torch", 39_300_000,
         LICENCE_MIT_UPSTREAM, "H3R HRNet-W18 98-point WFLW landmarks."),
    _hub("fan3d-landmarks", "data_preprocess/assets/landmark3d/3DFAN4-4a694010b9.zip", "torchscript", None,
         "BSD-3-Clause (face-alignment).", "3DFAN4 68-point landmarks (TorchScript archive; tensors only)."),
    _hub("fan3d-depth", "data_preprocess/assets/landmark3d/depth-6c4283c0e0.zip", "torchscript", None,
         "BSD-3-Clause (face-alignment).", "3DFAN depth network for 3D landmarks (TorchScript archive)."),
    _hub("deep3d-recon", "data_preprocess/assets/facerecon/deep3d_2023/epoch_20.pth", "torch", None,
         LICENCE_MIT_UPSTREAM + " Trained with BFM; " + LICENCE_BFM,
         "Deep3DFaceRecon ResNet-50 (2023 model): 257 BFM coefficients."),
    _hub("bfm-front", "data_preprocess/assets/facerecon/bfm/BFM_model_front.mat", "raw", None, LICENCE_BFM,
         "Basel Face Model (front part) used by Deep3DFaceRecon."),
    _gh("bfm2flame-mapper", "data_preprocess/assets/bfm2flame_mapper/model-iter200000.pth", "torch", 1125471,
        "730c2d2289bb5b1d1c2c351b0de8cc5c3a55c008bfcac2fb45130808635fd91c", LICENCE_MIT_UPSTREAM,
        "BFM -> FLAME mapper MLP (144 -> 403)."),
    # --- Portrait4D v1's FLAME parameter pools (data/ on the Hub; training_loop_recon_v1 draws GenHead's inputs
    # from them: avatar.models.genhead.pools). Plain float32 .npy arrays; sizes are the Hub page's figures.
    _hub("pools-ffhq-shape-n-c", "data/ffhq_all_shape_n_c_params.npy", "npy", int(182 * _MB), LICENCE_PORTRAIT4D,
         "FFHQ camera labels + FLAME shapes, rows of 25 + 300 (Portrait4D v1's online GenHead data)."),
    _hub("pools-vfhq-shape-n-c", "data/vfhq_all_shape_n_c_params.npy", "npy", int(14.1 * _MB), LICENCE_PORTRAIT4D,
         "VFHQ camera labels + FLAME shapes, rows of 25 + 300 (Portrait4D v1's online GenHead data)."),
    _hub("pools-ffhq-motion", "data/ffhq_all_motion_params.npy", "npy", int(62.7 * _MB), LICENCE_PORTRAIT4D,
         "FFHQ FLAME expression 100 + pose 6 + eye poses 6 (v1's static motions)."),
    _hub("pools-vfhq-motion", "data/vfhq_all_motion_params.npy", "npy", int(235 * _MB), LICENCE_PORTRAIT4D,
         "VFHQ FLAME expression 100 + pose 6 + eye poses 6 per frame, (clips, frames, 112) (v1's dynamic motions)."),
    # --- evaluation only: FID's Inception (a release asset of pytorch-fid; the name carries its SHA-256 prefix)
    UpstreamFile(key="fid-inception", path="pt_inception-2015-12-05-6726825d.pth", fmt="torch", size=None,
                 licence="Apache-2.0 (pytorch-fid; weights ported from TensorFlow's FID Inception).",
                 description="FID Inception v3 (pytorch-fid port of the TF FID network): the FID metric.",
                 source="release", sha256="6726825d",
                 release=("mseitzer/pytorch-fid", "fid_weights", "https://github.com/mseitzer/pytorch-fid/releases/"
                          "download/fid_weights/pt_inception-2015-12-05-6726825d.pth")),
    # --- evaluation only: MICA's ArcFace iresnet-100 (GAGAvatar's CSIM). MICA's install.sh fetches mica.tar from
    # the MPI keeper share (no login); the ArcFace is its "arcface" entry (avatar.losses.arcface_mica).
    UpstreamFile(key="mica-checkpoint", path="data/pretrained/mica.tar", fmt="torch", size=None,
                 licence="MICA (Zielon/MICA) licence: non-commercial scientific research only; the ArcFace part is "
                         "fine-tuned from InsightFace's Glint360K r100 (" + LICENCE_ARCFACE + ")",
                 description="MICA checkpoint (torch dict: 'arcface' iresnet-100 + 'flameModel'): the ArcFace of "
                             "GAGAvatar's CSIM (csim arcface='r100-mica').",
                 source="url",
                 release=("Zielon/MICA", "049c08bcadb90011dcdd48be2847cd3ccefe0735",
                          "https://keeper.mpdl.mpg.de/f/db172dc4bd4f4c0f96de/?dl=1")),
    # --- evaluation only: background removal (GOHA / OTAvatar) ----------------------------------------
    # Google Drive only (MODNET_DRIVE_FOLDER): no pinned digest; about 26.3 MB (the size public mirrors show).
    UpstreamFile(key="modnet-photographic", path="pretrained/modnet_photographic_portrait_matting.ckpt",
                 fmt="torch", size=int(26.3 * _MB), licence=LICENCE_MODNET, source="gdrive",
                 description="MODNet photographic portrait matting (MobileNetV2; DataParallel state dict, 'module.' "
                             "keys): eval.prepare --background remove. Download it from the official Google Drive "
                             "folder, then `avatar download --file modnet-photographic --from-dir DIR`."),
]

# face_alignment (1adrianb/face-alignment, BSD-3-Clause): the SFD detector and the 2D-FAN of its LandmarksType.TWO_D,
# the landmarks of OTAvatar's / GOHA's AKD (eval akd.landmark_model=face-alignment-2dfan). Addresses read in
# face_alignment 1.4.1 (tag v1.4.1): detection/sfd/sfd_detector.py models_urls['s3fd'] and api.py
# default_model_urls['2DFAN-4'] (used for PyTorch >= 1.7). No digest is published (face_alignment loads them with
# check_hash=False); the paths are the file names, as torch's hub cache (~/.cache/torch/hub/checkpoints) holds them.
FACE_ALIGNMENT_REPO = "1adrianb/face-alignment"
FACE_ALIGNMENT_COMMIT = "c94dd024b1f5410ef160ff82a8423141e2bbb6b4"  # tag v1.4.1
FACE_ALIGNMENT_URL = "https://www.adrianbulat.com/downloads/python-fan/"
LICENCE_FACE_ALIGNMENT = "BSD-3-Clause (face-alignment, Adrian Bulat)."
_FILE_LIST += [
    UpstreamFile(key="s3fd", path="s3fd-619a316812.pth", fmt="torch", size=None, licence=LICENCE_FACE_ALIGNMENT,
                 description="S3FD face detector of face_alignment (SFD; plain state dict): AKD's "
                             "face-alignment-2dfan landmarks (OTAvatar / GOHA).",
                 source="url",
                 release=(FACE_ALIGNMENT_REPO, FACE_ALIGNMENT_COMMIT, FACE_ALIGNMENT_URL + "s3fd-619a316812.pth")),
    UpstreamFile(key="fan2d-landmarks", path="2DFAN4-cd938726ad.zip", fmt="torchscript", size=None,
                 licence=LICENCE_FACE_ALIGNMENT,
                 description="2DFAN4 68-point 2-D landmarks of face_alignment (TorchScript archive; tensors only): "
                             "AKD's face-alignment-2dfan landmarks (OTAvatar / GOHA).",
                 source="url",
                 release=(FACE_ALIGNMENT_REPO, FACE_ALIGNMENT_COMMIT, FACE_ALIGNMENT_URL + "2DFAN4-cd938726ad.zip")),
]

# InsightFace (deepinsight/insightface): the SCRFD detector and the 68-point 3-D landmark network of the buffalo_l
# model pack, GAGAvatar's AKD landmarks (eval akd.landmark_model=insightface-3d68) and its crop's five keypoints.
# Address read in insightface 0.7.3 (python-package/insightface/utils/storage.py at 668e8d47: BASE_REPO_URL
# "https://github.com/deepinsight/insightface/releases/download/v0.7", FaceAnalysis(name="buffalo_l") ->
# ensure_available("models", "buffalo_l") -> "<BASE_REPO_URL>/buffalo_l.zip", extracted flat). ONNX graphs (no
# pickles); no digest is published. The antelopev2 pack holds the same two files (scrfd_10g_bnkps.onnx = det_10g).
INSIGHTFACE_REPO = "deepinsight/insightface"
# "add v0.7.3, move model storage to github release" (2023-04-02): where the address was read
INSIGHTFACE_COMMIT = "668e8d474267bdd2c9769c2cbbab3fe4d1db15a6"
INSIGHTFACE_PACK_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
LICENCE_INSIGHTFACE = (
    "InsightFace pretrained models (buffalo_l pack): non-commercial research purposes only (deepinsight/insightface "
    "README, 'License'); the code that runs them here is ours."
)
_FILE_LIST += [
    UpstreamFile(key="insightface-det-10g", path="det_10g.onnx", fmt="raw", size=None,
                 licence=LICENCE_INSIGHTFACE, source="url", member="det_10g.onnx",
                 description="SCRFD-10GF face detector with five keypoints (ONNX; InsightFace buffalo_l pack): the "
                             "faces of AKD's insightface-3d68 landmarks (GAGAvatar) and their five keypoints.",
                 release=(INSIGHTFACE_REPO, INSIGHTFACE_COMMIT, INSIGHTFACE_PACK_URL)),
    UpstreamFile(key="insightface-1k3d68", path="1k3d68.onnx", fmt="raw", size=None,
                 licence=LICENCE_INSIGHTFACE, source="url", member="1k3d68.onnx",
                 description="InsightFace 68-point 3-D landmarks (ONNX, 192x192 input; buffalo_l pack): AKD's "
                             "insightface-3d68 landmarks (GAGAvatar issue #43).",
                 release=(INSIGHTFACE_REPO, INSIGHTFACE_COMMIT, INSIGHTFACE_PACK_URL)),
]

_FILE_LIST += [
    # --- GOHA (NVlabs/GOHA): the released stage-3 checkpoint, Google Drive only (taken with --from-dir). It holds
    # every GOHA network, face parsing (BiSeNet 79999_iter) and GFPGAN (fine-tuned from v1.3) included, and the
    # cano_exemplar buffer; GOHA's Deep3DFaceRecon regressor and the BFM come from deep3d-recon and bfm-front.
    UpstreamFile(key="goha-s3", path="src/logs/s3/checkpoint825000.ckpt", fmt="torch", size=None,
                 licence=LICENCE_GOHA, source="gdrive",
                 description="GOHA (NeurIPS 2023) released checkpoint (torch dict: iter, model_state_dict, "
                             "discriminator_dict): all networks of GOHA's Model, face parsing and GFPGAN included. "
                             "Download the folder s3/ from the official Google Drive link, then `avatar download goha "
                             "--from-dir DIR`.",
                 release=(GOHA_REPO, GOHA_COMMIT, GOHA_CHECKPOINT_URL)),
]

FILES: dict[str, UpstreamFile] = {f.key: f for f in _FILE_LIST}

_PREPROCESSING = ("retinaface-r50", "h3r-hrnet-w18-wflw", "fan3d-landmarks", "fan3d-depth", "deep3d-recon",
                  "bfm-front", "bfm2flame-mapper")
_FLAME = ("flame-generic-model", "flame-masks", "flame-ca-shape", "flame-ca-exp", "flame-ca-pose",
          "flame-simplify-barycentric", "flame-addition-info", "flame-landmark-embedding")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model id: which network family it is, which upstream files it needs, how it loads.

    The registry is plain data (classes are named by dotted path and imported on use), so the asset layer can
    read it without importing any network. Adding a model family is writing its package under
    :mod:`avatar.models` and adding its entries here.

    Attributes:
        model_id: short id (``portrait4d-v2``), accepted by ``from_pretrained`` of the model class, by
            :func:`avatar.pipelines.auto.load_pipeline` (when ``pipeline_class`` is set) and by the CLI.
        description: one line for ``avatar models``.
        family: the model family (``portrait4d``, ``face``, ``motion``, ``perceptual``, ...).
        model_class: ``module:Class`` of the network (a :class:`avatar.modeling.ModelMixin`).
        checkpoint: key in :data:`FILES` of the main upstream checkpoint.
        requires: keys of every other file the model (and its pipeline) needs.
        options: family-specific loading options passed to ``model_class.from_registry`` (for example
            ``{"static": True}``), as a tuple of ``(name, value)`` pairs so that the spec stays hashable.
        pipeline_class: ``module:Class`` of the pipeline that runs this model id end to end, or ``None`` for a
            network used inside other pipelines.
    """

    model_id: str
    description: str
    family: str
    model_class: str
    checkpoint: str
    requires: tuple[str, ...] = field(default_factory=tuple)
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)
    pipeline_class: str | None = None

    @property
    def files(self) -> tuple[UpstreamFile, ...]:
        return tuple(FILES[k] for k in (self.checkpoint, *self.requires))

    @property
    def option_dict(self) -> dict[str, object]:
        return dict(self.options)


_P4D = "avatar.models.portrait4d:Portrait4D"
_P4D_PIPE = "avatar.pipelines.portrait4d:Portrait4DPipeline"

_SPECS: tuple[ModelSpec, ...] = (
    # --- model families (a pipeline runs them end to end) ---------------------------------------------
    ModelSpec("portrait4d-v2", "Portrait4D-v2 (ECCV 2024): one-shot 4D head synthesis, trained on VFHQ.",
              "portrait4d", _P4D, "portrait4d-v2-vfhq512", (*_FLAME, "pdfgc-motion", *_PREPROCESSING),
              pipeline_class=_P4D_PIPE),
    ModelSpec("portrait4d-v1", "Portrait4D (CVPR 2024): one-shot 4D head synthesis from GenHead data.",
              "portrait4d", _P4D, "portrait4d-genhead512", (*_FLAME, "pdfgc-motion", *_PREPROCESSING),
              pipeline_class=_P4D_PIPE),
    ModelSpec("portrait4d-static", "Static Portrait4D: one-shot 3D head reconstruction (no reenactment).",
              "portrait4d", _P4D, "portrait4d-static-genhead512", (*_FLAME, *_PREPROCESSING),
              options=(("static", True),), pipeline_class=_P4D_PIPE),
    ModelSpec("goha", "GOHA (NeurIPS 2023): NVIDIA's one-shot three-branch (canonical, expression, appearance) "
              "tri-plane head avatar; non-commercial weights.", "goha", "avatar.models.goha:GOHA", "goha-s3",
              ("deep3d-recon", "bfm-front", "retinaface-r50", "modnet-photographic"),
              pipeline_class="avatar.pipelines.goha:GOHAPipeline"),
    ModelSpec("genhead-ffhq512", "GenHead (Portrait4D, CVPR 2024): part-wise animatable 3D head generator (FFHQ).",
              "genhead", "avatar.models.genhead:GenHead", "genhead-ffhq512", _FLAME),
    # --- networks used inside pipelines and the benchmark -----------------------------------------------
    ModelSpec("retinaface-r50", "RetinaFace ResNet-50 face detector (official preprocessing).", "face",
              "avatar.face.retinaface:RetinaFace", "retinaface-r50"),
    ModelSpec("h3r-hrnet-w18-wflw", "H3R HRNet-W18: 98 WFLW landmarks (official preprocessing).", "face",
              "avatar.face.h3r:H3R", "h3r-hrnet-w18-wflw"),
    ModelSpec("fan3d", "3DFAN: 68 3D landmarks (FAN + depth network; official preprocessing).", "face",
              "avatar.face.fan3d:FAN3DLandmarker", "fan3d-landmarks", ("fan3d-depth",)),
    ModelSpec("s3fd", "S3FD (SFD) face detector of face_alignment (AKD's face-alignment-2dfan landmarks).", "face",
              "avatar.face.s3fd:S3FD", "s3fd"),
    ModelSpec("face-alignment-2dfan", "face_alignment's 2-D landmarks: SFD detector + 2DFAN4, 68 points (OTAvatar / "
              "GOHA AKD).", "face", "avatar.face.fan2d:FaceAlignment2D", "fan2d-landmarks", ("s3fd",)),
    ModelSpec("deep3d-recon", "Deep3DFaceRecon ResNet-50: 257 BFM coefficients (official preprocessing).", "face",
              "avatar.face.deep3d:Deep3DReconNet", "deep3d-recon"),
    ModelSpec("bfm2flame-mapper", "BFM -> FLAME mapper MLP (official preprocessing).", "face",
              "avatar.face.bfm2flame:BFM2FLAMEMapper", "bfm2flame-mapper"),
    ModelSpec("pdfgc-motion", "PD-FGC motion encoder: the 548-d motion of Portrait4D.", "motion",
              "avatar.motion.pdfgc:PDFGCEncoder", "pdfgc-motion"),
    ModelSpec("modnet-photographic", "MODNet portrait matting (evaluation's background removal).", "face",
              "avatar.face.modnet:MODNet", "modnet-photographic"),
    # --- perceptual networks: training losses and evaluation metrics (avatar.losses) --------------------
    ModelSpec("arcface-r18", "ArcFace iresnet-18 (MS1MV3): identity loss and the CSIM metric.", "perceptual",
              "avatar.losses.arcface:IResNet", "arcface-r18"),
    ModelSpec("arcface-r100-mica", "MICA's ArcFace iresnet-100 (Glint360K, fine-tuned in MICA): GAGAvatar's CSIM.",
              "perceptual", "avatar.losses.arcface_mica:MICAArcFace", "mica-checkpoint"),
    ModelSpec("lpips-alex", "LPIPS v0.1, AlexNet trunk (trunk from the torch hub cache): the LPIPS metric.",
              "perceptual", "avatar.losses.lpips:LPIPSNet", "lpips-alex", options=(("net", "alex"),)),
    ModelSpec("lpips-vgg", "LPIPS v0.1, VGG16 trunk (trunk from the torch hub cache): the training loss.",
              "perceptual", "avatar.losses.lpips:LPIPSNet", "lpips-vgg", options=(("net", "vgg"),)),
)
_D = "avatar.losses.discriminator:DualDiscriminator"
_SPECS += (
    # --- discriminators of the released training snapshots (training: --init-discriminator) -------------
    ModelSpec("portrait4d-v2-D", "Portrait4D-v2's dual discriminator (resume or fine-tune v2 training).",
              "discriminator", _D, "portrait4d-v2-vfhq512-D"),
    ModelSpec("portrait4d-v1-D", "Portrait4D (v1)'s dual discriminator.", "discriminator", _D,
              "portrait4d-genhead512-D"),
    ModelSpec("portrait4d-static-D", "Static Portrait4D's dual discriminator: v2's training starts from it.",
              "discriminator", _D, "portrait4d-static-genhead512-D"),
    ModelSpec("genhead-ffhq512-D", "GenHead's dual discriminator (train/genhead.py --init-discriminator).",
              "discriminator", _D, "genhead-ffhq512-D"),
    ModelSpec("fid-inception", "FID Inception v3 (pytorch-fid): the FID metric's 2048-d features.", "perceptual",
              "avatar.losses.inception:FIDInception", "fid-inception"),
)
MODELS: dict[str, ModelSpec] = {spec.model_id: spec for spec in _SPECS}
DEFAULT_MODEL_ID = "portrait4d-v2"


def pipeline_model_ids() -> list[str]:
    """The model ids a pipeline runs end to end (what the CLI, the app and ``eval`` accept)."""
    return [s.model_id for s in MODELS.values() if s.pipeline_class is not None]


def _import(dotted: str) -> type:
    import importlib

    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def model_class(spec: ModelSpec) -> type:
    """The network class of a spec (imported on first use)."""
    return _import(spec.model_class)


def pipeline_class(spec: ModelSpec) -> type:
    """The pipeline class of a spec; :class:`KeyError`-free error when the id is a network only."""
    if spec.pipeline_class is None:
        from avatar.errors import ModelNotFoundError

        raise ModelNotFoundError(f"'{spec.model_id}' is a network used inside pipelines, not a pipeline; "
                                 f"pipeline model ids: {', '.join(pipeline_model_ids())}")
    return _import(spec.pipeline_class)


def get_model(model_id: str) -> ModelSpec:
    """Look up a model id; the error lists the known ids."""
    try:
        return MODELS[model_id]
    except KeyError:
        from avatar.errors import UnknownModelIdError

        raise UnknownModelIdError(f"unknown model id '{model_id}'; known ids: {', '.join(MODELS)}") from None


def get_file(key: str) -> UpstreamFile:
    try:
        return FILES[key]
    except KeyError:
        from avatar.errors import UnknownModelIdError

        raise UnknownModelIdError(f"unknown upstream file '{key}'; known files: {', '.join(FILES)}") from None
