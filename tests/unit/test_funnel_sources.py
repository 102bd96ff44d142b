"""What the version registry stores of a definition parses back to the same definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadstage.funnels import Funnel, load_funnels, load_presets, parse_funnel
from leadstage_engine.versions import _definition_text

DEFINITION = """\
# comments and blank lines before the version move its line

name: sourced
version: 4
stages:
  - {name: A, group: tofu}
  - {name: B, group: mofu}
  - {name: C, group: bofu}
"""


def test_a_loaded_funnel_knows_its_file_text_and_version_line(tmp_path: Path) -> None:
    path = tmp_path / "sourced.yaml"
    path.write_text(DEFINITION, encoding="utf-8")
    funnel = load_funnels(tmp_path)["sourced"]
    assert funnel.source is not None
    assert (funnel.source.file, funnel.source.text, funnel.source.version_line) == (
        str(path),
        DEFINITION,
        4,
    )
    assert load_presets()["aida"].source is not None


@pytest.mark.parametrize("name", sorted(load_presets()))
def test_a_definition_built_in_code_is_stored_as_text_with_the_same_fingerprint(
    name: str,
) -> None:
    preset = load_presets()[name]
    in_code = Funnel(preset.spec)  # no file behind it
    assert in_code.source is None
    again = parse_funnel(_definition_text(in_code))
    assert again.fingerprint == preset.fingerprint
    assert again.rules == preset.rules
