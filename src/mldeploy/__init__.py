"""mldeploy: take a trained model to a production endpoint, from GitHub Actions or any CI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mldeploy")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
