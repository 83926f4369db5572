"""click's test runner with stderr kept apart from stdout, on click 8.1
(Debian 12's 8.1.3 mixes them unless told) and on 8.2+ (always apart, and
the mix_stderr argument is gone)."""

from click.testing import CliRunner


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:           # click >= 8.2
        return CliRunner()
