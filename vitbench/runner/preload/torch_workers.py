"""Fork server of torch workers: torch, timm (and torchvision) and the torch worker's modules."""
import timm  # noqa: F401  (torch and timm before anything else, as in every torch worker)
import torch  # noqa: F401

import vitbench.measure.compile  # noqa: F401
import vitbench.models.torch  # noqa: F401
import vitbench.providers.timm_provider  # noqa: F401
import vitbench.providers.vitbench_provider  # noqa: F401
import vitbench.runner.torch_worker  # noqa: F401
import vitbench.runner.worker  # noqa: F401
