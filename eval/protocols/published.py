"""Published numbers the report puts our row beside.

GOHA tables: Li et al., "Generalizable One-shot Neural Head Avatar" (GOHA), NeurIPS 2023, Tables 1-3, as transcribed
in ``../shared/design/eval-protocols.md`` section A. Keys of :data:`TABLES` are :attr:`Protocol.table`.
Metric names follow :data:`eval.metrics.METRICS`; every row holds the columns of its protocol (``None``: the
source does not report that column).

GAGAvatar-protocol tables (VFHQ and GAGAvatar's HDTF, :data:`eval.protocols.GAGAVATAR_PROTOCOLS`): a row goes in
only with a number read verbatim in the paper, README or issue thread that publishes it, with that source in
:attr:`PublishedTable.row_sources` and, where the row used another metric variant, sample set or crop than the
protocol, a comparability note in :attr:`PublishedTable.row_notes`. Numbers seen only in third-party summaries,
blogs or machine-written digests are never copied.

What was verified, and how (searched in stored copies of arXiv / project pages, GitHub issue threads, and the
authors' repositories with their full git history):

* ``gagavatar-vfhq-self`` / ``gagavatar-vfhq-cross``: one row, FlexAvatar's released checkpoint (FLEX-1), read in
  the table "3.2. Evaluation Results" of the authors' README (tobias-kirschstein/flexavatar, ``README.md`` at
  c1a31a7 / 05bb9eb, 2026-06-25), whose metric code (``scripts/compute_metrics.py``, ``scripts/evaluate.py``) was
  read to write the row's comparability note. The README says these numbers "slightly deviate from the paper".
* ``gagavatar-hdtf-self`` / ``gagavatar-hdtf-cross``: empty.
* Not verified, so not here: the VFHQ and HDTF tables of GAGAvatar (arXiv 2410.07971; with the baselines ROME,
  StyleHeat, OTAvatar, HideNeRF, GOHA, CVTHead, GPAvatar, Real3DPortrait, Portrait4D, Portrait4D-v2), LAM (arXiv
  2502.17796), FlexAvatar's paper (arXiv 2512.15599) and OMG-Avatar (arXiv 2603.01506). The stored arXiv HTML and
  project pages give only their opening text (abstract, introduction), not the tables; the authors' READMEs
  (xg-chu/GAGAvatar, aigc3d/LAM and JianqiangRen/OMG-Avatar in every version in git; xg-chu/GPAvatar) and
  project-page sources (xg-chu/xg-chu.github.io ``project_gagavatar``, FlexAvatar's ``website`` branch) hold no
  numbers, the paper PDFs are not in the stored snapshots, and no author answer in the issue threads read
  (GAGAvatar #36, #43, #47, #48; LAM #7, #43, #45) quotes a table value. Pages that list some of these numbers
  (paper digests, leaderboard sites) are third-party and were not used. GPAvatar (ICLR 2024) and Portrait4D-v2
  (ECCV 2024) predate GAGAvatar: their numbers under this protocol exist only as baselines in later papers' tables.

The report shows a table's columns even when it has no row, and says so in the table's note.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CITATION", "GAGAVATAR_CITATION", "PublishedTable", "TABLES"]

CITATION = ("X. Li, S. De Mello, S. Liu, K. Nagano, U. Iqbal, J. Kautz, \"Generalizable One-shot Neural Head "
            "Avatar\", NeurIPS 2023")


@dataclass(frozen=True)
class PublishedTable:
    """One published table.

    Attributes:
        title: what the report calls it. metrics: its columns (our metric names). rows: ``(method, values)``.
        note: the sample set it was computed on (the report repeats it).
        citation: the paper the table is from (``""``: GOHA, :data:`CITATION`).
        row_sources: method -> where its numbers were read (paper table, README, issue), for rows from
            elsewhere than ``citation``.
        row_notes: method -> comparability note (another metric variant, split or crop than the protocol's).
    """

    title: str
    metrics: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    note: str = ""
    citation: str = ""
    row_sources: tuple[tuple[str, str], ...] = ()
    row_notes: tuple[tuple[str, str], ...] = ()

    def as_dicts(self) -> list[tuple[str, dict[str, float | None]]]:
        return [(method, dict(zip(self.metrics, values, strict=True))) for method, values in self.rows]

    def source_of(self, method: str) -> str:
        return dict(self.row_sources).get(method, self.citation or CITATION)

    def note_of(self, method: str) -> str:
        return dict(self.row_notes).get(method, "")


_REC = ("l1", "lpips", "psnr", "ssim", "fid")
_CROSS = ("csim", "aed", "apd", "fid")
_SAME = ("psnr", "ssim", "csim", "aed", "apd", "akd", "lpips", "l1", "fid")
_GAGA_SELF = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")   # eval.protocols.GAGAVATAR_SELF_METRICS
_GAGA_CROSS = ("csim", "aed", "apd")                                  # eval.protocols.GAGAVATAR_CROSS_METRICS

GAGAVATAR_CITATION = ("X. Chu, T. Harada, \"Generalizable and Animatable Gaussian Head Avatar\" (GAGAvatar), "
                      "NeurIPS 2024")
_NO_ROWS = ("no published row verified yet from the papers' own tables (GAGAvatar, LAM, FlexAvatar, OMG-Avatar; "
            "with GAGAvatar's baselines GPAvatar, Portrait4D-v2, ...): only numbers read in a paper / README / issue "
            "go here (eval/protocols/published.py)")
_FLEX_ROW = ("FlexAvatar's README row (released checkpoint, 50 frames per clip, other metric variants: see row_notes "
             "in eval/protocols/published.py)")

# FlexAvatar (Kirschstein, Giebenhain, Niessner, CVPR 2026): the authors' README, not the paper.
_FLEX = "FlexAvatar (FLEX-1, released checkpoint)"
_FLEX_README = ("tobias-kirschstein/flexavatar README.md, section '3.2. Evaluation Results' (commit c1a31a7, "
                "2026-06-25; table added in 05bb9eb), row 'FLEX-1 | VFHQ-Test | --run_fitting --black --crop_vfhq', "
                "https://github.com/tobias-kirschstein/flexavatar#32-evaluation-results")
_FLEX_COMMON = (
    "README: 'The numbers slightly deviate from the paper due to the released checkpoint being different' (paper: "
    "arXiv 2512.15599, not read); 50 evenly spaced target frames per clip, 2,500 comparisons (scripts/evaluate.py "
    "n_frames_vfhq=50), not 99; 200 test-time fitting steps (--run_fitting, n_fitting_steps=200); black background "
    "(MatAnyone mattes, --black); AED / APD = L1 of the BFM expression / angle coefficients of eg3d-preprocessor's "
    "Deep3DFaceRecon (angles only, scripts/compute_metrics.py); CSIM from visage's CSIMEvaluator (InsightFace "
    "FaceAnalysis recognition embeddings), not MICA's ArcFace")
_FLEX_SELF_NOTE = (
    _FLEX_COMMON + "; GAGAvatar crop from the target's InsightFace keypoints (3x square, 512; --crop_vfhq); LPIPS "
    "with SqueezeNet under --crop_vfhq (scripts/compute_metrics.py), not AlexNet; AKD = mean Euclidean distance of "
    "InsightFace landmark_3d_68 (3-D) computed on the uncropped images")
_FLEX_CROSS_NOTE = (
    _FLEX_COMMON + "; CSIM against the source (input) image; driver = the previous clip in alphabetical order "
    "(scripts/evaluate.py --use_cross_reenactment), as this protocol's video i driving video i+1")

TABLES: dict[str, PublishedTable] = {
    "goha-table1-celeba-reconstruction": PublishedTable(
        "GOHA Table 1, CelebA 3D portrait reconstruction", _REC,
        (("ROME", (0.032, 0.085, 23.47, 0.847, 11.00)),
         ("GOHA", (0.015, 0.040, 28.61, 0.946, 2.457)),
         ("HeadNeRF (3000-image subset)", (0.135, 0.314, 13.86, 0.748, 65.87)),
         ("GOHA (same subset)", (0.024, 0.098, 25.83, 0.883, 9.400))),
        note="all 29,954 high-fidelity CelebA images"),
    "goha-table1-celeba-cross-identity": PublishedTable(
        "GOHA Table 1, CelebA cross-identity reenactment", _CROSS,
        (("ROME", (0.505, 0.244, 0.032, 34.45)),
         ("GOHA", (0.531, 0.251, 0.023, 25.26)),
         ("HeadNeRF (3000-image subset)", (0.224, 0.285, 0.027, 117.1)),
         ("GOHA (same subset)", (0.591, 0.278, 0.017, 22.97))),
        note="14,977 pairs"),
    "goha-table2-hdtf-same-identity": PublishedTable(
        "GOHA Table 2, HDTF same-identity reenactment", _SAME,
        (("ROME", (20.75, 0.838, 0.746, 0.123, 0.012, 2.938, 0.173, 0.047, 31.55)),
         ("OTAvatar", (20.12, 0.806, 0.619, 0.162, 0.017, 2.933, 0.198, 0.053, 36.63)),
         ("StyleHeat", (19.18, 0.805, 0.654, 0.141, 0.021, 2.843, 0.194, 0.056, 108.3)),
         ("Next3D-PTI", (19.89, 0.813, 0.645, 0.137, 0.035, 1.449, 0.180, 0.053, 41.66)),
         ("GOHA", (22.15, 0.868, 0.789, 0.129, 0.010, 2.596, 0.117, 0.037, 21.60))),
        note="37,860 frames of the 19 test videos"),
    "goha-table2-hdtf-cross-identity": PublishedTable(
        "GOHA Table 2, HDTF cross-identity reenactment", _CROSS,
        (("ROME", (0.629, 0.247, 0.020, 43.38)),
         ("OTAvatar", (0.514, 0.282, 0.028, 44.86)),
         ("StyleHeat", (0.537, 0.246, 0.025, 105.1)),
         ("Next3D-PTI", (0.581, 0.291, 0.045, 101.8)),
         ("GOHA", (0.643, 0.263, 0.018, 47.39))),
        note="67,203 images"),
    "goha-table3-hdtf-to-celeba": PublishedTable(
        "GOHA Table 3, HDTF -> CelebA cross-identity reenactment", _CROSS,
        (("ROME", (0.521, 0.270, 0.022, 76.03)),
         ("StyleHeat", (0.461, 0.270, 0.038, 94.28)),
         ("Next3D-PTI", (0.483, 0.266, 0.042, 56.01)),
         ("GOHA", (0.551, 0.274, 0.017, 59.48))),
        note="114,000 images"),
    # GAGAvatar's protocols (eval.protocols.GAGAVATAR_PROTOCOLS): only rows read in their primary source
    "gagavatar-vfhq-self": PublishedTable(
        "VFHQ self-reenactment (GAGAvatar protocol)", _GAGA_SELF,
        ((_FLEX, (23.32, 0.835, 0.099, 0.828, 0.087, 0.010, 3.007)),),
        note="50 VFHQ test clips x 99 driving frames; " + _FLEX_ROW + "; " + _NO_ROWS, citation=GAGAVATAR_CITATION,
        row_sources=((_FLEX, _FLEX_README + ", columns PSNR SSIM LPIPS CSIM AED APD AKD"),),
        row_notes=((_FLEX, _FLEX_SELF_NOTE),)),
    "gagavatar-vfhq-cross": PublishedTable(
        "VFHQ cross-reenactment (GAGAvatar protocol)", _GAGA_CROSS,
        ((_FLEX, (0.650, 0.247, 0.026)),),
        note="50 VFHQ test clips x 99 driving frames; " + _FLEX_ROW + "; " + _NO_ROWS, citation=GAGAVATAR_CITATION,
        row_sources=((_FLEX, _FLEX_README + ", columns CSIM (CR) AED (CR) APD (CR)"),),
        row_notes=((_FLEX, _FLEX_CROSS_NOTE),)),
    "gagavatar-hdtf-self": PublishedTable(
        "HDTF self-reenactment (GAGAvatar protocol)", _GAGA_SELF, (),
        note="19 HDTF test videos x 99 driving frames; " + _NO_ROWS, citation=GAGAVATAR_CITATION),
    "gagavatar-hdtf-cross": PublishedTable(
        "HDTF cross-reenactment (GAGAvatar protocol)", _GAGA_CROSS, (),
        note="19 HDTF test videos x 99 driving frames; " + _NO_ROWS, citation=GAGAVATAR_CITATION),
}
