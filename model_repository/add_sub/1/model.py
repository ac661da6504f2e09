"""Triton's classic add_sub example for the Python backend.

OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, element-wise. The model is
configured with max_batch_size > 0, so every request carries a leading batch dimension
([N, 4]); numpy broadcasting handles any N.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        out0 = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        out1 = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(out0["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(out1["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if in0.shape != in1.shape:
                error = pb_utils.TritonError(
                    f"INPUT0 shape {list(in0.shape)} != INPUT1 shape {list(in1.shape)}"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            out0 = np.add(in0, in1).astype(self.output0_dtype, copy=False)
            out1 = np.subtract(in0, in1).astype(self.output1_dtype, copy=False)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", out0),
                        pb_utils.Tensor("OUTPUT1", out1),
                    ]
                )
            )
        return responses

    def finalize(self):
        pass
