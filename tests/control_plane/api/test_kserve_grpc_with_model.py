"""kserve_grpc.with_model: the model name and version of a serialized ModelInferRequest
replaced by appending the two fields (protobuf's "last one wins"), what Triton then parses."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from control_plane.api.kserve_grpc import with_model


def test_appended_fields_win_and_nothing_else_changes() -> None:
    req = service_pb2.ModelInferRequest(model_name="add_sub", model_version="", id="r-1")
    item = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    item.parameters["custom"].string_param = "x"
    req.raw_input_contents.append(b"\x00" * 16)
    raw = req.SerializeToString()

    for name, version in (("add_sub", "1"), ("m" * 300, "12345678901")):  # long: 2-byte length
        got = service_pb2.ModelInferRequest.FromString(with_model(raw, name, version))
        assert (got.model_name, got.model_version) == (name, version)
        got.model_name, got.model_version = req.model_name, req.model_version
        assert got == req
