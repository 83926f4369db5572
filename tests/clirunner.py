"""click's test runner with the same results on click 8.1 (Debian 12's
8.1.3) and 8.2+: `stdout` and `stderr` apart, and `output` both (what a
terminal shows), as click 8.2 has them. Click 8.1 mixes stderr into stdout
unless told (mix_stderr=False), and then its `output` is stdout alone."""

from click.testing import CliRunner, Result


class _Result(Result):
    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class _Runner81(CliRunner):
    def __init__(self):
        super().__init__(mix_stderr=False)

    def invoke(self, *args, **kwargs):
        r = super().invoke(*args, **kwargs)
        r.__class__ = _Result
        return r


def runner() -> CliRunner:
    try:
        return _Runner81()
    except TypeError:           # click >= 8.2: already so
        return CliRunner()
