"""The protocol registry and the pairing rules on tiny synthetic data folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from eval.metrics import METRICS
from eval.protocols import DRIVER, PROTOCOLS, SOURCE, TARGET, get_protocol
from eval.protocols.pairs import HDTF_TEST_19, build_samples
from eval.protocols.published import TABLES


def _frames(root: Path, item: str, n: int) -> None:
    (root / item).mkdir(parents=True, exist_ok=True)
    for f in range(n):
        Image.new("RGB", (8, 8)).save(root / item / f"{f:06d}.png")


def test_registry() -> None:
    assert list(PROTOCOLS) == ["celeba/reconstruction", "celeba/cross-identity", "hdtf/same-identity",
                               "hdtf/cross-identity", "hdtf/to-celeba"]
    for p in PROTOCOLS.values():
        assert all(m in METRICS for m in p.metrics)
        assert TABLES[p.table].metrics == p.metrics  # our columns are the published table's
    same = get_protocol("hdtf", "same-identity")
    assert len(same.metrics) == 9 and set(same.reference.values()) == {TARGET}
    cross = get_protocol("hdtf/cross-identity")
    assert cross.reference == {"csim": SOURCE, "aed": DRIVER, "apd": DRIVER, "fid": SOURCE}
    with pytest.raises(KeyError, match="known"):
        get_protocol("hdtf", "nope")


def test_celeba_pairs_in_natural_order(tmp_path: Path) -> None:
    for name in ("img10", "img2", "img1", "img3", "img11"):
        _frames(tmp_path, name, 1)
    s = build_samples(get_protocol("celeba", "cross-identity"), tmp_path)
    assert [(x.id, x.source.parent.name, x.driver.parent.name) for x in s.samples] == [
        ("img1/000000", "img1", "img2"), ("img3/000000", "img3", "img10")]
    assert any("img11" in n for n in s.notes)
    rec = build_samples(get_protocol("celeba", "reconstruction"), tmp_path, limit=2)
    assert [x.id for x in rec.samples] == ["img1/000000", "img2/000000"] and len(rec.all_ids) == 5
    assert rec.samples[0].target == rec.samples[0].source == rec.samples[0].driver


def test_hdtf_pairs(tmp_path: Path) -> None:
    data, celeba = tmp_path / "hdtf", tmp_path / "celeba"
    for v in ("b", "a", "WRA_EricCantor_000"):
        _frames(data, v, 4)
    for c in ("c1", "c2"):
        _frames(celeba, c, 1)
    same = build_samples(get_protocol("hdtf", "same-identity"), data)
    assert same.groups == ["WRA_EricCantor_000", "a", "b"] and len(same.samples) == 9
    assert same.samples[3].id == "a/000001" and same.samples[0].source.name == "000000.png"
    assert "not comparable" in same.notes[0]
    cross = build_samples(get_protocol("hdtf", "cross-identity"), data)
    assert len(cross.samples) == 12  # 3 sources (the driver's own too) x 4 driver frames
    assert {x.driver.parent.name for x in cross.samples} == {"WRA_EricCantor_000"}
    to = build_samples(get_protocol("hdtf", "to-celeba"), data, sources=celeba, limit=2)
    assert to.samples[0].id == "c1__WRA_EricCantor_000/000000" and to.samples[0].source.parent.name == "c1"
    assert len(to.samples) == 6 and len(to.all_ids) == 24
    lst = tmp_path / "list.txt"
    lst.write_text("b\nzz\n")
    with pytest.raises(FileNotFoundError, match="zz"):
        build_samples(get_protocol("hdtf", "same-identity"), data, video_list=lst)


@pytest.mark.media
def test_shared_hdtf_list_is_the_published_19(shared_media: Path) -> None:
    names = (shared_media / "lists" / "hdtf" / "hdtf_test_19.txt").read_text().split()
    assert sorted(names) == sorted(HDTF_TEST_19)
