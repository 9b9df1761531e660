"""CoCu Pipeline core library: pure, testable building blocks (no Prefect imports)."""

__version__ = "0.1.0"
