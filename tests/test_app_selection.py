"""ENV / -c env= selection: environments, the account-level stack ``ci``, and the default."""

from __future__ import annotations

from pathlib import Path

import pytest
from aws_cdk import App

from app import Selection, select
from config import ConfigError
from tests.conftest import ENVIRONMENTS
from tests.test_config import _config_dir


def _select(monkeypatch: pytest.MonkeyPatch, wanted: str | None, **context: str) -> Selection:
    monkeypatch.delenv("ENV", raising=False)
    if wanted is not None:
        monkeypatch.setenv("ENV", wanted)
    return select(App(context=context))


def _names(selection: Selection) -> tuple[list[str], bool]:
    return [c.name for c in selection.environments], selection.account is not None


def test_default_is_every_environment_and_the_ci_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _names(_select(monkeypatch, None)) == (list(ENVIRONMENTS), True)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_one_environment_leaves_the_ci_stack_out(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """`make deploy ENV=production` (cdk deploy --all -c env=production) never touches the CI
    stack: the deploy role it runs as cannot and should not change its own trust."""
    assert _names(_select(monkeypatch, env)) == ([env], False)
    assert _names(_select(monkeypatch, None, env=env)) == ([env], False)


def test_ci_selects_only_the_account_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _names(_select(monkeypatch, "ci")) == ([], True)
    assert _names(_select(monkeypatch, "production, ci")) == (["production"], True)


def test_context_wins_over_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _names(_select(monkeypatch, "dev", env="ci")) == ([], True)


def test_unknown_name_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^unknown environment 'qa'; known environments: "):
        _select(monkeypatch, "qa")


def test_without_account_file_default_skips_ci_and_ci_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _config_dir(tmp_path)
    (folder / "account.yaml").unlink()
    monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(folder))
    assert _names(_select(monkeypatch, None)) == (list(ENVIRONMENTS), False)
    with pytest.raises(ConfigError, match=r"^config/account\.yaml not found"):
        _select(monkeypatch, "ci")


def test_account_file_is_not_an_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^unknown environment 'account'"):
        _select(monkeypatch, "account")


def test_image_source_override_for_releases() -> None:
    from app import with_image_source
    from config import load_environment

    dev = load_environment("dev")
    assert dev.image.source == "asset"
    assert with_image_source(dev, None) is dev
    assert with_image_source(dev, "ghcr").image.source == "ghcr"
    assert with_image_source(dev, "ghcr").fleet == dev.fleet
    with pytest.raises(
        ConfigError, match=r"^-c image_source=docker is not allowed \(allowed: asset, ghcr\)$"
    ):
        with_image_source(dev, "docker")
