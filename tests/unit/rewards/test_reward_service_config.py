"""The reward service's config needs a name and a reward section, and ``rayrm serve-rm`` takes
a config or ``--stop``, not both (the service in use: tests/ray/rewards/test_reward_service.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayrm.cli import build_parser
from rayrm.config import ConfigError
from rayrm.rewards.service import load_reward_config, main


def test_service_config_needs_a_name(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"reward": {"source": "function"}}))
    with pytest.raises(ConfigError) as e:
        load_reward_config(path)
    assert e.value.key == "reward.pool_name"
    assert load_reward_config(path, name="svc").pool_name == "svc"
    path.write_text(yaml.safe_dump({"model": {"path": "x"}}))
    with pytest.raises(ConfigError, match="reward"):
        load_reward_config(path)
    with pytest.raises(ConfigError, match="not both"):
        main(build_parser().parse_args(["serve-rm", "c.yaml", "--stop", "x"]))
