"""The operator's settings: read from the environment, and a bad value stops the operator (not opens a door)."""
import pytest

from kiln.spec.settings import Settings


def test_a_default_platform_that_is_not_one_stops_the_operator():
    assert Settings.from_env({"KILN_DEFAULT_PLATFORM": "linux/arm64/v8"}).default_platform == "linux/arm64/v8"
    with pytest.raises(ValueError, match="'arm64' is not a platform"):
        Settings.from_env({"KILN_DEFAULT_PLATFORM": "arm64"})
