"""Shared test fixtures. Keep each fixture small and documented; add new ones in the matching section.

Sections: images (tiny generated inputs), Ray (one local session for the whole test run), S3 (a local moto
server). Nothing here reaches the network.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

TINY_BACKBONE = "random:vit_tiny_patch16_224"  # randomly initialised: no weights download


# --- images --------------------------------------------------------------------------------------------------


def tiny_image_bytes(size: tuple[int, int] = (48, 64), seed: int = 0, fmt: str = "PNG") -> bytes:
    """A smooth random colour image (height, width), encoded as PNG/JPEG."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, mode="RGB").resize((size[1], size[0]), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def save_image(path, seed: int, size: tuple[int, int] = (40, 56)):
    """A smooth random colour PNG (height, width) at `path` (a pathlib.Path; folders created); returns `path`."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    coarse.resize((size[1], size[0]), Image.BILINEAR).save(path)
    return path


CORRUPT_IMAGE = tiny_image_bytes(seed=99)[:60]  # a PNG cut off after its header: fails to decode


@pytest.fixture
def make_image(tmp_path):
    """make_image(relative_path, size=(h, w), seed=0, corrupt=False) -> absolute path of a new image file."""

    def make(relative: str, size: tuple[int, int] = (48, 64), seed: int = 0, corrupt: bool = False) -> str:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        path.write_bytes(CORRUPT_IMAGE if corrupt else tiny_image_bytes(size, seed, fmt))
        return str(path)

    return make


@pytest.fixture
def make_pairs(tmp_path, make_image):
    """make_pairs(ids, corrupt=(), folder='pairs') -> folder with <id>/structure.png + <id>/appearance.png each."""

    def make(ids, corrupt=(), folder: str = "pairs", size: tuple[int, int] = (48, 64)) -> str:
        for index, pair_id in enumerate(ids):
            make_image(f"{folder}/{pair_id}/structure.png", size, seed=2 * index, corrupt=pair_id in corrupt)
            make_image(f"{folder}/{pair_id}/appearance.png", size, seed=2 * index + 1)
        return str(tmp_path / folder)

    return make


# --- Ray -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for the whole test session; yields its address for subprocess drivers."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=0,
            object_store_memory=256 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            namespace="splice-tests",
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# --- faults ---------------------------------------------------------------------------------------------------


@pytest.fixture
def inject_faults(monkeypatch):
    """inject_faults(plan): crash or slow the pipeline at its hook points as `plan` says (see tests/faults.py), in
    this process and in the Ray workers and subprocesses it starts, for this test only."""
    from faults import fault_env

    def install(plan: str) -> None:
        for name, value in fault_env(plan).items():
            monkeypatch.setenv(name, value)

    return install


# --- S3 ------------------------------------------------------------------------------------------------------


@dataclass
class S3Bucket:
    endpoint: str
    bucket: str
    options: dict  # storage options for s3fs (key, secret, endpoint_url)

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options, skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server():
    """A local moto S3 server on 127.0.0.1 for the session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> S3Bucket:
    """A fresh, empty bucket on the moto server, with credentials that exist nowhere else."""
    import boto3

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    key, secret = "test-key-id", f"test-secret-{uuid.uuid4().hex[:8]}"
    bucket = f"splice-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    ).create_bucket(Bucket=bucket)
    return S3Bucket(
        endpoint=s3_server, bucket=bucket, options={"key": key, "secret": secret, "endpoint_url": s3_server}
    )


class ColourSegmenter:
    """Deterministic stand-in segmenter for layout_miou: class = dominant channel (1..3), or 0 (background) where
    all channels are dark."""

    name, weights_id, num_classes = "colour", "deterministic", 4
    class_names = ["background", "red", "green", "blue"]

    def segment(self, images):
        import torch

        labels = images.argmax(1) + 1
        return torch.where(images.max(1).values < 0.2, torch.zeros_like(labels), labels)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached weights anywhere and no network: what a fresh offline machine looks like."""
    import pipeline.method.weights

    monkeypatch.setenv("SPLICE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pipeline.method.weights, "cached_hub_file", lambda hub_id: None)

    monkeypatch.setattr(
        pipeline.method.weights, "_announced", set()
    )  # banners are once per process: once per test here
    return tmp_path
