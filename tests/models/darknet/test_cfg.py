"""Reading and writing Darknet cfg text: what Darknet ignores is ignored, and a written cfg reads back the same."""

import pytest

from search.errors import WeightsError
from search.models.darknet.cfg import parse_cfg, parse_cfg_text
from tests.models.darknet.common import ALL_OPTIONS_CFG, family_cfg, family_params


def test_comments_spaces_and_case_are_read_as_darknet_does():
    cfg = parse_cfg_text("# a comment\n[NET]\nwidth = 64\n; another\n\n[convolutional]\nlayers = -1, 23\n", source="x")
    assert cfg.net.kind == "net" and cfg.net.options == {"width": "64"} and cfg.net.line == 2
    (layer,) = cfg.layers
    assert (layer.kind, layer.index, layer.line, layer.options) == ("convolutional", 0, 6, {"layers": "-1,23"})
    assert layer.integers("layers") == (-1, 23)


def test_written_text_reads_back_as_the_same_cfg():
    cfg = parse_cfg_text(ALL_OPTIONS_CFG, source="all options")
    again = parse_cfg_text(cfg.text(), source="written")
    assert [(s.kind, dict(s.options)) for s in again.layers] == [(s.kind, dict(s.options)) for s in cfg.layers]
    assert again.text() == cfg.text()
    assert cfg.text().startswith("[net]\nwidth=64\n") and cfg.text().endswith("activation=linear\n\n[yolo]\n"
                                                                              "mask=0,1,2\nanchors=10,14,23,27,37,58,"
                                                                              "81,82,135,169,344,319\nclasses=2\n"
                                                                              "num=6\nscale_x_y=1.1\njitter=.3\n")


@pytest.mark.real
@pytest.mark.parametrize("name", family_params())
def test_every_family_cfg_reads_back_the_same(name):
    cfg = parse_cfg(family_cfg(name))
    assert parse_cfg_text(cfg.text(), source="written").text() == cfg.text()


def test_with_changes_keep_the_keys_in_place():
    cfg = parse_cfg_text("[net]\nwidth=416\nheight=416\nchannels=3\n[maxpool]\nsize=2\nstride=2\n", source="x")
    changed = cfg.with_net(width=64, height=64).with_layer(0, stride=1)
    assert changed.text() == "[net]\nwidth=64\nheight=64\nchannels=3\n\n[maxpool]\nsize=2\nstride=1\n"
    assert cfg.text().startswith("[net]\nwidth=416\n")  # a value: the original is unchanged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[net]\nthis is not a cfg\n", r"expected '\[section\]' or 'key=value', but got 'this is not a cfg' \(x.cfg, line 2\)"),
        ("# nothing\n", r"no \[section\] in Darknet cfg \(x.cfg\)"),
        ("[convolutional]\nfilters=3\n", r"the first section must be \[net\], but got \[convolutional\] \(x.cfg, line 1\)"),
        ("width=3\n[net]\n", r"expected '\[section\]' or 'key=value', but got 'width=3' \(x.cfg, line 1\)"),
    ],
    ids=["garbage", "empty", "no_net", "key_before_section"],
)
def test_malformed_text_is_one_line_naming_file_and_line(text, message):
    with pytest.raises(WeightsError, match=message) as caught:
        parse_cfg_text(text, source="x.cfg")
    assert "\n" not in str(caught.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(WeightsError, match=r"Darknet cfg file not found: .*nope\.cfg"):
        parse_cfg(tmp_path / "nope.cfg")


def test_values_read_as_numbers_name_the_key_and_layer():
    section = parse_cfg_text("[net]\n[convolutional]\nfilters=3x2\nmask=1,a\n", source="x.cfg").layers[0]
    with pytest.raises(WeightsError, match=r"^filters: must be an integer, but got '3x2' \(x.cfg, layer 0 \[convolutional\], line 2\)$"):
        section.integer("filters")
    with pytest.raises(WeightsError, match=r"^mask: must be comma-separated integers, but got '1,a'"):
        section.integers("mask")
    with pytest.raises(WeightsError, match=r"^size: is required in a \[convolutional\] section, but is missing"):
        section.integer("size")
    assert section.integer("size", 1) == 1 and section.number("scale_x_y", 1.0) == 1.0
