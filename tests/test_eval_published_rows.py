"""Published rows of the GAGAvatar-protocol tables (eval/protocols/published.py): every row has its own source,
values of the table's columns (floats or None), metric names of eval.metrics, and spot checks of the numbers read in
the source (so a typo fails). Data only, offline."""

from __future__ import annotations

import pytest

from eval.metrics import METRICS
from eval.protocols import GAGAVATAR_CROSS_METRICS, GAGAVATAR_PROTOCOLS, GAGAVATAR_SELF_METRICS
from eval.protocols.published import GAGAVATAR_CITATION, TABLES, PublishedTable

GAGA_TABLES = ("gagavatar-vfhq-self", "gagavatar-vfhq-cross", "gagavatar-hdtf-self", "gagavatar-hdtf-cross")
FLEX = "FlexAvatar (FLEX-1, released checkpoint)"


def _table(key: str) -> PublishedTable:
    return TABLES[key]


def test_every_gagavatar_protocol_has_its_table() -> None:
    assert sorted(p.table for p in GAGAVATAR_PROTOCOLS.values()) == sorted(GAGA_TABLES)
    for p in GAGAVATAR_PROTOCOLS.values():
        assert _table(p.table).metrics == p.metrics


@pytest.mark.parametrize("key", GAGA_TABLES)
def test_rows_have_source_columns_and_float_values(key: str) -> None:
    table = _table(key)
    expected = GAGAVATAR_SELF_METRICS if key.endswith("-self") else GAGAVATAR_CROSS_METRICS
    assert table.metrics == expected and all(m in METRICS for m in table.metrics)
    assert table.citation == GAGAVATAR_CITATION and table.note
    methods = [method for method, _ in table.rows]
    assert len(methods) == len(set(methods))
    sources = dict(table.row_sources)
    for method, values in table.rows:
        assert len(values) == len(table.metrics)
        assert all(v is None or type(v) is float for v in values), (method, values)
        # its own source (not the table's default citation), naming where the numbers were read
        assert sources.get(method, "").strip(), method
        assert table.source_of(method) == sources[method]
    # no source or note for a row that is not there
    assert set(sources) <= set(methods) and set(dict(table.row_notes)) <= set(methods)
    assert len(sources) == len(table.row_sources) and len(dict(table.row_notes)) == len(table.row_notes)


def test_flexavatar_vfhq_rows_match_the_readme() -> None:
    # tobias-kirschstein/flexavatar README.md, "3.2. Evaluation Results", row FLEX-1 / VFHQ-Test
    self_row = dict(_table("gagavatar-vfhq-self").as_dicts())[FLEX]
    assert self_row == {"psnr": 23.32, "ssim": 0.835, "lpips": 0.099, "csim": 0.828, "aed": 0.087, "apd": 0.010,
                        "akd": 3.007}
    cross_row = dict(_table("gagavatar-vfhq-cross").as_dicts())[FLEX]
    assert cross_row == {"csim": 0.650, "aed": 0.247, "apd": 0.026}
    for key in ("gagavatar-vfhq-self", "gagavatar-vfhq-cross"):
        table = _table(key)
        assert "tobias-kirschstein/flexavatar" in table.source_of(FLEX) and "README" in table.source_of(FLEX)
        note = table.note_of(FLEX)  # another sample set and metric variants than the protocol: said in its note
        assert "released checkpoint" in note and "50" in note and "MICA" in note


def test_unverified_tables_stay_empty_and_say_so() -> None:
    for key in ("gagavatar-hdtf-self", "gagavatar-hdtf-cross"):
        table = _table(key)
        assert table.rows == () and table.row_sources == () and table.row_notes == ()
        assert "no published row verified yet" in table.note


def test_report_names_each_rows_own_source_and_note() -> None:
    from eval.protocols.published import TABLES
    from eval.report import published_provenance

    vfhq = TABLES["gagavatar-vfhq-self"]
    lines = published_provenance(vfhq)
    flex = [line for line in lines if line.startswith(f"- {vfhq.rows[0][0]}: from ")]
    assert len(flex) == 1 and vfhq.source_of(vfhq.rows[0][0]) in flex[0] and "Comparability:" in flex[0]
    assert not any("eval-protocols.md` §A" in line for line in lines)  # no row of this table was transcribed there
    goha = published_provenance(TABLES["goha-table1-celeba-reconstruction"])
    assert len(goha) == 1 and "§A" in goha[0]
