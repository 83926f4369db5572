"""cttrace: real-time tracer and analyser for the Linux conntrack table."""

__version__ = "0.1.0"
