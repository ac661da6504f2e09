"""The example models of model_repository/ load in the real CPU Triton image and answer right."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import rig

pytestmark = pytest.mark.docker
EXAMPLES = ("add_sub", "upper_case", "iris_classifier")


@pytest.fixture(scope="module")
def triton(
    docker_host: str, triton_image: str, model_repository: Path
) -> Iterator[rig.TritonContainer]:
    with rig.triton_container(
        docker_host,
        model_repository,
        rig.free_port(),
        rig.free_port(),
        rig.free_port(),
        image=triton_image,
        load_models=EXAMPLES,
    ) as server:
        yield server


def test_every_example_is_ready(triton: rig.TritonContainer) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        for name in EXAMPLES:
            assert client.is_model_ready(name), triton.logs()
    finally:
        client.close()


def test_upper_case_answers(triton: rig.TritonContainer) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        text = np.array([b"hello", "straße".encode(), b"gpu fleet"], dtype=np.object_)
        tin = httpclient.InferInput("TEXT", [3], "BYTES")
        tin.set_data_from_numpy(text)
        out = client.infer("upper_case", [tin]).as_numpy("UPPER")
    finally:
        client.close()
    assert out is not None
    assert out.tolist() == [b"HELLO", b"STRASSE", b"GPU FLEET"]


def test_iris_classifier_answers(triton: rig.TritonContainer) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        x = np.array([[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]], np.float32)
        fin = httpclient.InferInput("FEATURES", [3, 4], "FP32")
        fin.set_data_from_numpy(x)
        result = client.infer("iris_classifier", [fin])
    finally:
        client.close()
    labels = result.as_numpy("LABEL")
    probs = result.as_numpy("PROBABILITIES")
    assert labels is not None and probs is not None
    assert labels.tolist() == [[b"setosa"], [b"versicolor"], [b"virginica"]]
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
