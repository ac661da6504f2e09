"""token_stream: a decoupled model that streams "tokens" (the words of PROMPT) one response at a
time, DELAY_MS apart (default: the config's ``default_delay_ms``), up to MAX_TOKENS (default:
the number of words; the words repeat beyond it). Each response: TOKEN (BYTES [1]) and INDEX
(INT32 [1]). A cancelled request (the client hung up, gpufleet cancelled the job) stops the
generation at the next token; the model logs how far it got.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_TOKENS_LIMIT = 100_000


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return int(tensor.as_numpy().reshape(-1)[0])


def _log(message):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:  # older backends: the stub's stdout reaches Triton's log too
        print(message, flush=True)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters") or {}
        self.default_delay_ms = int(params.get("default_delay_ms", {}).get("string_value", "50"))

    def execute(self, requests):
        for request in requests:
            self._generate(request)
        return None  # decoupled: every answer went through the response sender

    def _generate(self, request):
        sender = request.get_response_sender()
        prompt = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy().reshape(-1)[0]
        text = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        words = text.split() or [""]
        max_tokens = min(max(0, _scalar(request, "MAX_TOKENS", len(words))), MAX_TOKENS_LIMIT)
        delay_s = max(0, _scalar(request, "DELAY_MS", self.default_delay_ms)) / 1000.0
        sent = 0
        for index in range(max_tokens):
            if sender.is_cancelled():
                _log(f"token_stream: request cancelled after {sent} of {max_tokens} tokens")
                break
            if index:
                time.sleep(delay_s)
            token = np.array([words[index % len(words)].encode("utf-8")], dtype=np.object_)
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("TOKEN", token),
                        pb_utils.Tensor("INDEX", np.array([index], dtype=np.int32)),
                    ]
                )
            )
            sent = index + 1
        else:
            _log(f"token_stream: finished {sent} tokens")
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
