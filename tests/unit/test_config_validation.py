"""Every setting is checked when a process starts: a bad value names its variable."""

from __future__ import annotations

import pytest

from deskmail.workers.config import Config
from deskmail.workers.errors import ConfigurationError


@pytest.mark.parametrize("name, value", [
    ("DESKMAIL_CONTROL_TIMEOUT", "fifteen"), ("DESKMAIL_DB_POOL_MAX", "1.5"), ("DESKMAIL_RETRY_BASE", "-3"),
    ("DESKMAIL_STALE_AFTER", "nan"), ("MAIL_LIMIT_PER_DAY_SMTP", "many"), ("DESKMAIL_OUTBOUND_ALLOW", "10.0.0/33"),
    ("DESKMAIL_LOG_LEVEL", "loud"), ("DESKMAIL_SCHEDULER_INTERVAL", "inf"),
])
def test_a_bad_setting_is_refused_naming_its_variable(name, value):
    with pytest.raises(ConfigurationError, match=f"^{name}: "):
        Config.from_env({name: value})


def test_good_settings_and_unset_optional_limits_are_taken():
    config = Config.from_env({"DESKMAIL_CONTROL_TIMEOUT": " 20 ", "MAIL_LIMIT_PER_DAY_SMTP": "",
                              "DESKMAIL_LOG_LEVEL": "debug"})
    assert config.control_timeout == 20 and config.global_per_day is None and config.log_level == "DEBUG"
