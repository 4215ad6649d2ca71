"""Without promtool the exposition check skips on a laptop, but fails in CI."""

from __future__ import annotations

import shutil

import pytest

from tests.metrics_parse import promtool_check


def test_missing_promtool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is not installed"):
        promtool_check("")
    for off in ("", "0", "false"):
        monkeypatch.setenv("CI", off)
        with pytest.raises(pytest.skip.Exception):
            promtool_check("")
