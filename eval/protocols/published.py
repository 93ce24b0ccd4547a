"""Published numbers the report puts our row beside.

GOHA tables: Li et al., "Generalizable One-shot Neural Head Avatar" (GOHA), NeurIPS 2023, Tables 1-3, as transcribed
in ``../shared/design/eval-protocols.md`` section A. Keys of :data:`TABLES` are :attr:`Protocol.table`.
Metric names follow :data:`eval.metrics.METRICS`; every row holds the columns of its protocol (``None``: the
source does not report that column).

GAGAvatar-protocol tables (VFHQ and GAGAvatar's HDTF, :data:`eval.protocols.GAGAVATAR_PROTOCOLS`): a row goes in
only with a number read in the paper, README or issue thread that publishes it, with that source in
:attr:`PublishedTable.row_sources` and, where the row used another metric variant or split, a comparability note
in :attr:`PublishedTable.row_notes`. None has been verified that way yet (the papers' tables were not reachable from
here; numbers seen only in third-party summaries are not copied), so these tables are empty: the report shows the
columns and says so.
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
_NO_ROWS = ("no published row verified yet: GAGAvatar, LAM (He et al. 2025), Portrait4D-v2, GPAvatar, FlexAvatar "
            "and OMG-Avatar report this protocol, but only numbers read in their papers / READMEs / issues go here "
            "(eval/protocols/published.py)")

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
    # GAGAvatar's protocols (eval.protocols.GAGAVATAR_PROTOCOLS): empty until a row is read in its primary source
    "gagavatar-vfhq-self": PublishedTable(
        "VFHQ self-reenactment (GAGAvatar protocol)", _GAGA_SELF, (),
        note="50 VFHQ test clips x 99 driving frames; " + _NO_ROWS, citation=GAGAVATAR_CITATION),
    "gagavatar-vfhq-cross": PublishedTable(
        "VFHQ cross-reenactment (GAGAvatar protocol)", _GAGA_CROSS, (),
        note="50 VFHQ test clips x 99 driving frames; " + _NO_ROWS, citation=GAGAVATAR_CITATION),
    "gagavatar-hdtf-self": PublishedTable(
        "HDTF self-reenactment (GAGAvatar protocol)", _GAGA_SELF, (),
        note="19 HDTF test videos x 99 driving frames; " + _NO_ROWS, citation=GAGAVATAR_CITATION),
    "gagavatar-hdtf-cross": PublishedTable(
        "HDTF cross-reenactment (GAGAvatar protocol)", _GAGA_CROSS, (),
        note="19 HDTF test videos x 99 driving frames; " + _NO_ROWS, citation=GAGAVATAR_CITATION),
}
