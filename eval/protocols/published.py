"""Published numbers the report puts our row beside.

Source: Li et al., "Generalizable One-shot Neural Head Avatar" (GOHA), NeurIPS 2023, Tables 1-3, as transcribed
in ``../shared/design/eval-protocols.md`` section A. Keys of :data:`TABLES` are :attr:`Protocol.table`.
Metric names follow :data:`eval.metrics.METRICS`; every row holds the columns of its protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CITATION", "PublishedTable", "TABLES"]

CITATION = ("X. Li, S. De Mello, S. Liu, K. Nagano, U. Iqbal, J. Kautz, \"Generalizable One-shot Neural Head "
            "Avatar\", NeurIPS 2023")


@dataclass(frozen=True)
class PublishedTable:
    title: str
    metrics: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float, ...]], ...]
    note: str = ""

    def as_dicts(self) -> list[tuple[str, dict[str, float]]]:
        return [(method, dict(zip(self.metrics, values, strict=True))) for method, values in self.rows]


_REC = ("l1", "lpips", "psnr", "ssim", "fid")
_CROSS = ("csim", "aed", "apd", "fid")
_SAME = ("psnr", "ssim", "csim", "aed", "apd", "akd", "lpips", "l1", "fid")

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
}
