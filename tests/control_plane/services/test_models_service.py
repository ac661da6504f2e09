"""ModelService on the embedded store (multipart on both stores): uploads through real
presigned PUTs (httpx), commit checks, layout rules, ownership, multipart."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from gpufleet.wire import CommitRequest, CreateVersionRequest, FileSpec

from control_plane.errors import Conflict, InvalidRequest, ModelNotFound, NotFound
from control_plane.services.models import ModelService
from tests.conftest import STORE_KINDS
from tests.contract.fleet import add_sub_files, file_specs, principal, push_model, services

USER = principal("acme")


@pytest.fixture
def models(settings: Any, stores: Any) -> ModelService:
    return services(settings, stores)[1]


def test_upload_commit_ready_with_parsed_config(models: ModelService) -> None:
    view = push_model(models, USER)
    assert view.state == "READY" and view.version == "1" and view.max_batch_size == 8
    assert [(i.name, i.datatype, i.shape) for i in view.inputs] == [
        ("INPUT0", "FP32", [-1, 4]),
        ("INPUT1", "FP32", [-1, 4]),
    ]
    assert [o.name for o in view.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert view.config["backend"] == "python"
    assert models.ready_version(USER, "add_sub", None).version == "1"
    assert push_model(models, USER).version == "1"  # the same content: that version
    changed = add_sub_files(salt="v2")
    assert push_model(models, USER, files=changed).version == "2"  # other content: next number
    got = models.get(USER, "add_sub")
    assert [v.version for v in got.versions] == ["2", "1"] and got.tenant == "acme"
    assert [m.name for m in models.list_models(USER).models] == ["add_sub"]


def test_sha_mismatch_lists_files_and_stays_not_ready(models: ModelService) -> None:
    files = add_sub_files()
    tampered = {**files, "1/model.py": files["1/model.py"].replace(b"return", b"retvrn")}
    with pytest.raises(InvalidRequest) as exc:
        push_model(models, USER, files=files, uploaded=tampered)
    assert "1/model.py" in exc.value.message
    assert exc.value.details == [{"field": "files.1/model.py", "message": "sha256 does not match"}]
    assert models.get(USER, "add_sub").versions[0].state == "UPLOADING"
    with pytest.raises(ModelNotFound):
        models.ready_version(USER, "add_sub", None)


def test_missing_upload_is_reported(models: ModelService) -> None:
    files = add_sub_files()
    created = models.create_version(
        USER, "add_sub", CreateVersionRequest(version="1", files=file_specs(files))
    )
    with pytest.raises(InvalidRequest) as exc:
        models.commit(USER, "add_sub", created.version, CommitRequest())
    assert {d["message"] for d in exc.value.details} == {"not uploaded"}


@pytest.mark.parametrize(
    "path",
    ["../config.pbtxt", "/etc/passwd", "1\\model.py", "1//model.py", "1/./model.py", "2/model.py"],
)
def test_bad_paths_are_rejected(models: ModelService, path: str) -> None:
    specs = [*file_specs(add_sub_files()), FileSpec(path=path, size=1, sha256="0" * 64)]
    with pytest.raises(InvalidRequest) as exc:
        models.create_version(USER, "add_sub", CreateVersionRequest(version="1", files=specs))
    assert exc.value.field and exc.value.field.startswith("files")


def test_config_is_required_and_backend_file_checked_at_commit(models: ModelService) -> None:
    only_model = {"1/model.py": b"x"}
    with pytest.raises(InvalidRequest):
        models.create_version(
            USER, "add_sub", CreateVersionRequest(version="1", files=file_specs(only_model))
        )
    files = {"config.pbtxt": add_sub_files()["config.pbtxt"], "1/other.py": b"x"}
    with pytest.raises(InvalidRequest) as exc:
        push_model(models, USER, files=files, version="1")
    assert "1/model.py" in exc.value.message


def test_config_name_must_match(models: ModelService) -> None:
    with pytest.raises(InvalidRequest) as exc:
        push_model(models, USER, name="other", files=add_sub_files())
    assert "'add_sub'" in exc.value.message


def test_names_belong_to_the_first_tenant(models: ModelService) -> None:
    push_model(models, USER)
    other = principal("globex")
    with pytest.raises(NotFound):
        models.get(other, "add_sub")
    with pytest.raises(ModelNotFound):
        models.ready_version(other, "add_sub", None)
    with pytest.raises(NotFound):  # as a read: no hint that the name exists elsewhere
        push_model(models, other)
    assert models.list_models(other).models == []
    assert models.get(principal("root", "admin"), "add_sub").tenant == "acme"


def test_delete_version(models: ModelService) -> None:
    push_model(models, USER)
    models.delete_version(USER, "add_sub", "1")
    with pytest.raises(NotFound):
        models.delete_version(USER, "add_sub", "1")
    with pytest.raises(ModelNotFound):
        models.ready_version(USER, "add_sub", "1")


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_multipart_upload_above_part_size(settings: Any, stores: Any) -> None:
    part = 5 * 1024 * 1024  # S3's smallest part; production uses 64 MiB
    blobs = stores.blobs
    models = ModelService(settings, stores.models, blobs, part_size=part)
    weights = bytes(range(256)) * (part // 256) + b"tail"
    files = {**add_sub_files(), "1/weights.bin": weights}
    created = models.create_version(
        USER, "add_sub", CreateVersionRequest(version="1", files=file_specs(files))
    )
    etags: dict[str, list[str]] = {}
    with httpx.Client(timeout=60) as http:
        for target in created.uploads:
            if target.multipart is None:
                assert target.url
                assert http.put(target.url, content=files[target.path]).status_code == 200
                continue
            assert len(target.multipart.parts) == 2
            data = files[target.path]
            for p in target.multipart.parts:
                chunk = data[(p.number - 1) * part : p.number * part]
                r = http.put(p.url, content=chunk)
                assert r.status_code == 200
                etags.setdefault(target.path, []).append(r.headers["ETag"])
    view = models.commit(USER, "add_sub", "1", CommitRequest(parts=etags))
    assert view.state == "READY"
    assert blobs.sha256_of("models/add_sub/1/1/weights.bin") == hashlib.sha256(weights).hexdigest()


def test_push_twice_answers_the_existing_version_and_uploads_nothing(
    models: ModelService,
) -> None:
    push_model(models, USER)
    files = add_sub_files()
    again = models.create_version(USER, "add_sub", CreateVersionRequest(files=file_specs(files)))
    assert (again.version, again.state, again.uploads) == ("1", "READY", [])
    pinned = models.create_version(
        USER, "add_sub", CreateVersionRequest(version="1", files=file_specs(files))
    )
    assert pinned.state == "READY" and pinned.uploads == []
    other = file_specs(add_sub_files(salt="x"))
    with pytest.raises(Conflict) as exc:
        models.create_version(USER, "add_sub", CreateVersionRequest(version="1", files=other))
    assert "push without a version" in exc.value.message


def test_config_text_is_checked_before_any_upload(models: ModelService) -> None:
    files = add_sub_files()
    specs = file_specs(files)
    ok = models.create_version(
        USER,
        "add_sub",
        CreateVersionRequest(files=specs, config=files["config.pbtxt"].decode()),
    )
    assert ok.state == "UPLOADING" and ok.uploads
    broken = {**files, "config.pbtxt": files["config.pbtxt"] + b"\nnot a field: 1\n"}
    with pytest.raises(InvalidRequest) as exc:
        models.create_version(
            USER,
            "add_sub",
            CreateVersionRequest(files=file_specs(broken), config=broken["config.pbtxt"].decode()),
        )
    assert exc.value.field == "config.pbtxt"
    with pytest.raises(InvalidRequest) as exc:  # text and declared file disagree
        models.create_version(
            USER, "add_sub", CreateVersionRequest(files=specs, config='name: "add_sub"')
        )
    assert exc.value.field == "config"
    assert [v.version for v in models.get(USER, "add_sub").versions] == ["1"]
