"""The house style's page-width helpers: font sizes as a reader sees them, and what ``savefig`` records."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from lib.book import plotting  # noqa: E402


def test_smallest_font_finds_the_smallest_visible_text():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set_title("title", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.set_xlabel("x", fontsize=12)
    ax.set_ylabel("y", fontsize=12)
    ax.legend(fontsize=9)
    assert plotting.smallest_font(fig) == 9
    ax.text(0.5, 0.5, "tiny", fontsize=6)
    assert plotting.smallest_font(fig) == 6
    ax.text(0.2, 0.2, "hidden", fontsize=4, visible=False)
    ax.text(0.2, 0.2, "   ", fontsize=3)  # blank: nothing to read
    assert plotting.smallest_font(fig) == 6
    plt.close(fig)


def test_smallest_font_of_a_figure_without_text_is_an_error():
    fig = plt.figure()
    with pytest.raises(ValueError, match="no visible text"):
        plotting.smallest_font(fig)
    plt.close(fig)


def test_rendered_font_scales_with_the_width_the_page_shows():
    with plt.rc_context({"font.size": 10, "axes.titlesize": 10}):
        wide, ax = plt.subplots(figsize=(14, 3))
        ax.plot([0, 1])
        w = plotting.saved_width(wide)
        assert 10 < w < 14.2  # the tight box of a 14-inch figure (its empty margins cut), plus padding
        # shown 7 inches wide, the 10 pt labels of a 14-inch figure (11.4 inches once cropped) read at about 6 pt
        assert plotting.rendered_font(wide, width=7.0) == pytest.approx(10 * 7.0 / w)
        assert plotting.rendered_font(wide, width=7.0) < 7
        page, ax = plotting.page_figure(1, 2, height=3)
        ax[0].plot([0, 1])
        ax[1].plot([1, 0])
        ax[0].set(xlabel="step", ylabel="loss", title="a title")
        # constrained layout keeps the figure inside the column, padding included: it reads at its own size
        assert plotting.PAGE_WIDTH - 0.3 < plotting.saved_width(page) <= plotting.PAGE_WIDTH
        assert plotting.rendered_font(page) >= 10
        fig, axes = plotting.page_figure(height=4, mosaic=[["top", "top"], ["a", "b"]])
        assert set(axes) == {"top", "a", "b"} and fig.get_size_inches()[0] == pytest.approx(
            plotting.PAGE_WIDTH - 2 * plt.rcParams["savefig.pad_inches"])
    plt.close("all")


def test_savefig_records_width_and_smallest_font(tmp_path):
    fig, ax = plotting.page_figure(height=2.5)
    ax.plot([0, 1], [1, 0], label="l")
    ax.legend(fontsize=8)
    path = plotting.savefig(fig, tmp_path / "out", "curve")
    info = plotting.png_font_info(path)
    assert info["smallest_font_pt"] == plotting.MIN_FONT  # the 8-pt legend was raised to the house style's floor
    assert plotting.smallest_font(fig) == plotting.MIN_FONT
    assert info["width_in"] == pytest.approx(plotting.saved_width(fig), abs=1e-3)
    from PIL import Image

    with Image.open(path) as im:  # the recorded width is the width of the image written
        assert im.width / plt.rcParams["savefig.dpi"] == pytest.approx(info["width_in"], abs=0.02)
    bare = plt.figure(figsize=(2, 2))
    bare.add_axes((0, 0, 1, 1)).set_axis_off()
    with pytest.raises(KeyError):
        plotting.png_font_info(plotting.savefig(bare, tmp_path, "bare"))
    plt.close("all")
