"""Shared fixtures: tiny suites written to tmp dirs, and a CLI runner."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import timm  # noqa: F401  (torch and timm/torchvision before anything imports TensorFlow: the other order
import torch  # noqa: F401  aborts the process, "Option 'bitcode-mdindex-threshold' registered more than once")
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli():
    from vitbench.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def write_suite(tmp_path):
    def write(text: str, name: str = "suite.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
