"""Engine config validation and language resolution."""

from __future__ import annotations

import pytest

from engine.config import EngineConfig
from engine.errors import BadRequestError
from engine.languages import resolve_language


def test_from_dict_with_policy() -> None:
    cfg = EngineConfig.from_dict({"max_streams": 4, "policy": {"border_s": 0.3}})
    assert cfg.max_streams == 4 and cfg.policy.border_s == 0.3


@pytest.mark.parametrize(
    "data",
    [{"max_stream": 4}, {"policy": {"border": 1}}, {"min_step_s": 0}, {"min_step_s": 3.0, "max_step_s": 2.0}],
)
def test_bad_config_is_an_error(data: dict) -> None:
    with pytest.raises(ValueError):
        EngineConfig.from_dict(data)


def test_languages() -> None:
    assert resolve_language("auto") is None and resolve_language(None) is None
    assert resolve_language("en") == "English" and resolve_language("english") == "English"
    with pytest.raises(BadRequestError):
        resolve_language("klingon")
