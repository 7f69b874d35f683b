"""CUDA-graph replay of a fitted detector (the GPU test runs where CUDA is present)."""

import pytest
import torch

from fapm.models.cuda_graph import CudaGraphed, GraphCache
from fapm.models.detector import MemoryDetector
from fapm.models.features import FeatureExtractor


def fitted_detector(device: str) -> tuple[MemoryDetector, torch.Tensor]:
    """A small FAPM detector (random ResNet-18, 2×2 grid, 128 px) fitted on 6 noisy images."""
    with pytest.warns(UserWarning, match="RANDOM"):
        extractor = FeatureExtractor("resnet18", pretrained="false", seed=0)
    detector = MemoryDetector(extractor, grid=(2, 2)).to(device).eval()
    g = torch.Generator().manual_seed(0)
    images = (torch.randn(1, 3, 128, 128, generator=g) + 0.3 * torch.randn(9, 3, 128, 128, generator=g)).to(device)
    with torch.inference_mode():
        detector.collect(images[:6])
        detector.build()
    return detector, images[6:]


def test_capture_refuses_cpu_inputs() -> None:
    with pytest.raises(ValueError, match="CUDA input"):
        CudaGraphed(lambda x: x * 2, torch.zeros(1, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replay_equals_eager_and_follows_new_inputs() -> None:
    detector, images = fitted_detector(device="cuda")
    run = GraphCache(detector)
    with torch.inference_mode():
        for batch in (images[:1], images[1:2], images[:3]):
            eager = detector(batch)
            replayed = run(batch)
            assert torch.allclose(replayed.image_scores, eager.image_scores, rtol=1e-5, atol=1e-6)
            assert torch.allclose(replayed.anomaly_maps, eager.anomaly_maps, rtol=1e-5, atol=1e-6)
        graph = CudaGraphed(detector, images[:1])
        with pytest.raises(ValueError, match="captured for inputs"):
            graph(images[:2])
