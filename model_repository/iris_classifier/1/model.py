"""iris_classifier: softmax regression over the four Iris measurements (numpy only).

FEATURES  FP32 [N, 4]  sepal length, sepal width, petal length, petal width (cm)
PROBABILITIES FP32 [N, 3]  setosa, versicolor, virginica
LABEL     BYTES [N, 1]  the most probable species

The weights (1/weights.npz) were trained by ../train.py; they load without pickle.
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "weights.npz")
        with np.load(path, allow_pickle=False) as w:
            self.mean = w["mean"].astype(np.float32)
            self.std = w["std"].astype(np.float32)
            self.w = w["w"].astype(np.float32)
            self.b = w["b"].astype(np.float32)
            self.labels = [str(label).encode("utf-8") for label in w["labels"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
            logits = ((x.astype(np.float32) - self.mean) / self.std) @ self.w + self.b
            logits = logits - logits.max(axis=-1, keepdims=True)
            p = np.exp(logits)
            p = p / p.sum(axis=-1, keepdims=True)
            labels = np.array([[self.labels[i]] for i in p.argmax(axis=-1)], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("PROBABILITIES", p.astype(np.float32)),
                        pb_utils.Tensor("LABEL", labels),
                    ]
                )
            )
        return responses
