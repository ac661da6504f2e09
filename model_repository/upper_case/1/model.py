"""upper_case: TEXT (BYTES, UTF-8 strings, shape [N]) -> UPPER, each string upper-cased."""

import numpy as np
import triton_python_backend_utils as pb_utils


def _upper(value):
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text.upper().encode("utf-8")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            upper = np.array([_upper(v) for v in text.reshape(-1)], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("UPPER", upper.reshape(text.shape))]
                )
            )
        return responses
