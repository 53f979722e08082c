"""A second architecture for umx's test suite, installed as a plugin: one network of every target,
waveform in and out, registered in the `umx.architectures` entry-point group."""

from setuptools import setup

setup(
    name="umx-tinymask",
    version="0.1.0",
    packages=["umx_tinymask"],
    install_requires=[],  # umx and torch are the suite's own
    entry_points={"umx.architectures": ["tinymask = umx_tinymask:ARCHITECTURE"]},
)
