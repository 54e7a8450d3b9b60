"""RowList draws its lines itself (not through Textual's styles cache): they must still be
exactly as wide as the widget, cropped as asked, and pass through the app's line filters
(NO_COLOR turns every colour off)."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.filter import Monochrome
from textual.geometry import Region

from fwtop.ui.rowlist import ColumnSpec, RowList


class Numbers(RowList):
    COLUMNS = (ColumnSpec("n", "n", 4, right=True), ColumnSpec("what", "what", None))


class One(App[None]):
    def compose(self) -> ComposeResult:
        yield Numbers()


def rows(n: int) -> tuple[list[str], list[tuple[tuple[tuple[str, str], ...], ...]]]:
    keys = [f"k{i}" for i in range(n)]
    cells = [(((str(i), ""),), ((f"row {i}", "bold #ff2000"),)) for i in range(n)]
    return keys, cells


async def test_lines_fill_the_widget_crop_and_take_the_app_filters() -> None:
    app = One()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Numbers)
        table.set_rows(*rows(30))
        await pilot.pause()
        width = table.scrollable_content_region.width
        full = table.render_lines(Region(0, 0, width, 5))
        assert [s.cell_length for s in full] == [width] * 5
        assert full[1].text.strip() == "0  row 0"  # the header, then the rows in order
        assert "n" in full[0].text and "what" in full[0].text
        assert any(seg.style and seg.style.color is not None for seg in full[2])  # red
        part = table.render_lines(Region(3, 1, 6, 2))
        assert [s.text for s in part] == [s.crop(3, 9).text for s in full[1:3]]
        cursor = table.render_lines(Region(0, 1, width, 1))[0]
        assert cursor.text == full[1].text
        assert [seg.style for seg in cursor] != [seg.style for seg in full[2]]

        app._filters.append(Monochrome())
        grey = table.render_lines(Region(0, 0, width, 5))
        assert [s.text for s in grey] == [s.text for s in full]
        for strip in grey:  # the header, the cursor row (its style under the filter too), rows
            for seg in strip:
                for color in (seg.style.color, seg.style.bgcolor) if seg.style else ():
                    assert color is None or color.triplet is None or \
                        len({*color.triplet}) == 1, seg  # grey: r == g == b


async def test_a_new_theme_redraws_the_cached_rows_and_focus_does_not() -> None:
    app = One()
    async with app.run_test(size=(40, 12)) as pilot:
        app.theme = "textual-dark"
        table = app.query_one(Numbers)
        table.set_rows(*rows(30))
        await pilot.pause()
        width = table.scrollable_content_region.width
        dark = table.render_lines(Region(0, 2, width, 1))[0]
        drawn = table.rows_drawn
        table.blur()
        await pilot.pause()
        table.focus()
        await pilot.pause()
        assert table.render_lines(Region(0, 2, width, 1))[0] is dark  # from the cache
        assert table.rows_drawn == drawn
        app.theme = "textual-light"
        await pilot.pause()
        light = table.render_lines(Region(0, 2, width, 1))[0]
        assert light.text == dark.text
        assert {s.style.bgcolor for s in light if s.style} != \
            {s.style.bgcolor for s in dark if s.style}
