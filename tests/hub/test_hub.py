"""Publishing to the Hub, offline, through the real client code.

A loopback fake of the Hub HTTP API (``fake_hub_server.py``) runs in this process; the Hugging Face clients run in
three subprocesses with their own environment, because ``huggingface_hub`` reads ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` when it is imported (this session's conftest sets ``HF_HUB_OFFLINE=1`` for everything else):

- ``clients/push_client.py`` (hf_deq importable, server up): train tiny models, publish, load back, Trainer push,
  error paths;
- ``clients/remote_code_client.py`` (``import hf_deq`` fails there, server up): ``trust_remote_code=True`` loads;
- ``clients/offline_client.py`` (server stopped, ``HF_HUB_OFFLINE=1``): loads from the cache.

Each client writes a JSON report; the tests below read it. ``HF_DEQ_HUB_TEST_PYTHON`` picks another interpreter
for the clients (e.g. a venv with other transformers / huggingface_hub versions), ``HF_DEQ_HUB_TEST_REMOTE_PYTHON``
one for the remote-code client only (a user without hf_deq on another stack).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fake_hub_server import FakeHubServer
from fake_hub_state import git_blob_sha1

#: every test here shares the module's push/load client runs (about 45 s on a 2-core machine)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = Path(__file__).resolve().parent / "clients"
TOKEN = "hf_fake_write_token"
LM_REPO, MDEQ_REPO, TRAINER_REPO = "user/deq-lm-tiny", "user/mdeq-tiny", "user/deq-lm-trainer"
CLIENT_TIMEOUT = 300


def _client_env(endpoint: str, work: Path, *, offline: bool, hf_deq_on_path: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(work / "hf_home"),
        HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="0",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        TMPDIR=str(work / "tmp"),
        HF_DEQ_REPO_ROOT=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if hf_deq_on_path:
        env["PYTHONPATH"] = str(ROOT)
    return env


def _run_client(script: str, work: Path, env: dict[str, str]) -> dict:
    report_path = work / f"{Path(script).stem}.json"
    python = os.environ.get("HF_DEQ_HUB_TEST_PYTHON", sys.executable)
    if script == "remote_code_client.py":
        python = os.environ.get("HF_DEQ_HUB_TEST_REMOTE_PYTHON", python)
    proc = subprocess.run(
        [python, str(CLIENTS / script), str(report_path), str(work)],
        env=env,
        cwd=str(work / "tmp"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["returncode"] = proc.returncode
    report["stderr_tail"] = proc.stderr[-4000:]
    return report


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("hub")
    (work / "tmp").mkdir()
    timings = {}
    with FakeHubServer(
        require_token=TOKEN, idle_timeout=CLIENT_TIMEOUT, lifetime=3 * CLIENT_TIMEOUT
    ) as server:
        endpoint = server.endpoint
        start = time.monotonic()
        push = _run_client(
            "push_client.py", work, _client_env(endpoint, work, offline=False, hf_deq_on_path=True)
        )
        timings["push"] = time.monotonic() - start
        remote: dict = {"skipped": "push client failed"}
        if push.get("completed"):
            start = time.monotonic()
            remote = _run_client(
                "remote_code_client.py",
                work,
                _client_env(endpoint, work, offline=False, hf_deq_on_path=False),
            )
            timings["remote"] = time.monotonic() - start
        log = list(server.log)
    offline: dict = {"skipped": "push client failed"}
    if push.get("completed"):
        start = time.monotonic()
        offline = _run_client(
            "offline_client.py", work, _client_env(endpoint, work, offline=True, hf_deq_on_path=True)
        )
        timings["offline"] = time.monotonic() - start
    print("hub client seconds:", {k: round(v, 1) for k, v in timings.items()})
    return {"push": push, "remote": remote, "offline": offline, "log": log, "timings": timings}


def _completed(report: dict) -> dict:
    if not report.get("completed"):
        pytest.fail(
            "hub client did not complete:\n"
            + str(report.get("error") or report.get("skipped"))
            + "\n--- stderr ---\n"
            + report.get("stderr_tail", "")
        )
    return report


# -- the fake server itself (no HF library involved) ------------------------------------------------------------


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_fake_hub_answers_the_client_protocol():
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with FakeHubServer(require_token=TOKEN) as hub:
        base = hub.endpoint
        status, _, _ = _request(f"{base}/api/repos/create", "POST", b'{"name": "r", "organization": "user"}')
        assert status == 401  # no token
        status, _, body = _request(
            f"{base}/api/repos/create", "POST", b'{"name": "r", "organization": "user"}', auth
        )
        assert status == 200 and json.loads(body)["url"].endswith("/user/r")
        assert (
            _request(f"{base}/api/repos/create", "POST", b'{"name": "r", "organization": "user"}', auth)[0]
            == 409
        )
        assert _request(f"{base}/api/repos/create", "POST", b'{"name": "bad name"}', auth)[0] == 400
        files = {
            "files": [
                {"path": "a.txt", "sample": "aGk=", "size": 2},
                {"path": "w.safetensors", "sample": "", "size": 4},
            ]
        }
        status, _, body = _request(
            f"{base}/api/models/user/r/preupload/main", "POST", json.dumps(files).encode(), auth
        )
        assert [f["uploadMode"] for f in json.loads(body)["files"]] == ["regular", "lfs"]
        import base64
        import hashlib

        weights = b"\x00\x01\x02\x03"
        oid = hashlib.sha256(weights).hexdigest()
        batch = {"operation": "upload", "objects": [{"oid": oid, "size": 4}]}
        status, _, body = _request(
            f"{base}/user/r.git/info/lfs/objects/batch", "POST", json.dumps(batch).encode(), auth
        )
        href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
        assert _request(href, "PUT", weights)[0] == 200
        ndjson = b"\n".join(
            json.dumps(line).encode()
            for line in (
                {"key": "header", "value": {"summary": "add"}},
                {
                    "key": "file",
                    "value": {
                        "path": "a.txt",
                        "content": base64.b64encode(b"hi").decode(),
                        "encoding": "base64",
                    },
                },
                {
                    "key": "lfsFile",
                    "value": {"path": "w.safetensors", "algo": "sha256", "oid": oid, "size": 4},
                },
            )
        )
        status, _, body = _request(f"{base}/api/models/user/r/commit/main", "POST", ndjson, auth)
        commit = json.loads(body)["commitOid"]
        status, headers, body = _request(f"{base}/user/r/resolve/main/a.txt", "GET")
        assert (status, body, headers["X-Repo-Commit"]) == (200, b"hi", commit)
        assert headers["ETag"] == f'"{git_blob_sha1(b"hi")}"' and headers["Content-Length"] == "2"
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(
                urllib.request.Request(f"{base}/user/r/resolve/{commit}/w.safetensors", method="HEAD")
            )
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as err:
            assert (
                err.code == 302
                and err.headers["X-Linked-Etag"] == f'"{oid}"'
                and err.headers["X-Linked-Size"] == "4"
            )
            assert _request(err.headers["Location"])[2] == weights  # the "CDN" origin
        status, headers, _ = _request(f"{base}/user/r/resolve/main/missing.txt", "HEAD")
        assert (
            status == 404
            and headers["X-Error-Code"] == "EntryNotFound"
            and headers["X-Repo-Commit"] == commit
        )
        assert _request(f"{base}/api/models/user/nope")[1]["X-Error-Code"] == "RepoNotFound"
        assert _request(f"{base}/user/r/resolve/deadbeef00/a.txt")[1]["X-Error-Code"] == "RevisionNotFound"
        tree = json.loads(_request(f"{base}/api/models/user/r/tree/main?recursive=true")[2])
        assert {e["path"] for e in tree} == {".gitattributes", "a.txt", "w.safetensors"}
        info = json.loads(_request(f"{base}/api/models/user/r")[2])
        assert info["sha"] == commit and {s["rfilename"] for s in info["siblings"]} >= {
            "a.txt",
            "w.safetensors",
        }
        hub.add_failure(500, "/api/models/user/r$", times=1)
        assert _request(f"{base}/api/models/user/r")[0] == 500
        assert _request(f"{base}/api/models/user/r")[0] == 200
        card = "---\nlibrary_name: transformers\nmodel-index:\n- name: x\n  results:\n  - task: {}\n---\ntext"
        status, _, body = _request(
            f"{base}/api/validate-yaml", "POST", json.dumps({"content": card}).encode()
        )
        assert status == 400 and json.loads(body)["errors"]
    assert not hub.running


def test_fake_hub_stops_by_itself():
    hub = FakeHubServer(idle_timeout=0.3).start()
    try:
        deadline = time.monotonic() + 5
        while hub.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not hub.running and "idle" in hub.stop_reason
    finally:
        hub.stop()
    capped = FakeHubServer(max_requests=2).start()
    try:
        assert _request(f"{capped.endpoint}/api/models/user/none")[0] == 404
        assert _request(f"{capped.endpoint}/api/models/user/none")[0] == 404
        assert _request(f"{capped.endpoint}/api/models/user/none")[0] == 503
    finally:
        capped.stop()
    assert "max_requests" in capped.stop_reason


# -- end to end through the real clients ------------------------------------------------------------------------


def test_push_then_from_pretrained_gives_identical_outputs(hub_run):
    push = _completed(hub_run["push"])
    assert (
        push["lm_loaded_class"]
        == "hf_deq.models.deq_transformer.modeling_deq_transformer.DEQTransformerForCausalLM"
    )
    assert push["lm_logits_identical"] and push["lm_generate_identical"] and push["tokenizer_round_trip"]
    assert push["cli_push_exit"] == 0, push.get("cli_push_stderr")
    assert push["mdeq_logits_identical"] and push["mdeq_pixels_identical"]
    assert push["mdeq_private"] is True
    assert (
        push["mdeq_anonymous_read"]["raised"] is not None
    )  # a private repo is not readable without the token


def test_pushed_repo_carries_weights_card_code_and_auto_map(hub_run):
    push = _completed(hub_run["push"])
    lm_files, mdeq_files = set(push["lm_repo_files"]), set(push["mdeq_repo_files"])
    assert {
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "all_results.json",
        "modeling_deq_transformer.py",
        "configuration_deq_transformer.py",
        "deq_core.py",
        "configuration_deq.py",
    } <= lm_files
    assert not any(f.endswith(".bin") for f in lm_files | mdeq_files)
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_mdeq.py",
        "image_processing_mdeq.py",
    } <= mdeq_files
    assert push["lm_auto_map"] == {
        "AutoConfig": "configuration_deq_transformer.DEQTransformerConfig",
        "AutoModel": "modeling_deq_transformer.DEQTransformerModel",
        "AutoModelForCausalLM": "modeling_deq_transformer.DEQTransformerForCausalLM",
    }
    assert push["mdeq_auto_map"] == {
        "AutoConfig": "configuration_mdeq.MDEQConfig",
        "AutoModel": "modeling_mdeq.MDEQModel",
        "AutoModelForImageClassification": "modeling_mdeq.MDEQForImageClassification",
    }
    assert push["mdeq_processor_auto_map"] == {
        "AutoImageProcessor": "image_processing_mdeq.MDEQImageProcessor"
    }
    generated = push["bundle_differs_from_sources_only_in_imports"]
    assert generated and all(generated.values()), generated


def test_model_card_metadata_and_content(hub_run):
    push = _completed(hub_run["push"])
    meta = push["lm_card_metadata"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"deq", "implicit-model", "phantom-gradient"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "perplexity"
    assert push["lm_card_eval_results"] and push["lm_card_eval_results"][0]["metric"] == "perplexity"
    text = push["lm_card_text"]
    for needle in (
        "Parameters",
        "anderson",
        "`upg`",
        "k (steps)",
        "mean solver steps",
        "the run's evaluation",
        "AdamW",
        "wall time",
        "import hf_deq",
        "trust_remote_code=True",
        "## Limitations",
        "@inproceedings{geng2021training",
        "@inproceedings{bai2019deep",
    ):
        assert needle.lower() in text.lower(), needle
    assert "must-not-appear-in-card" not in text  # secrets in the recipe are dropped
    # a local file: named in the text and the model-index, never presented as a Hub dataset
    assert "Data: local data, `hamlet.txt` (not a Hub dataset)." in text and "datasets" not in meta
    assert meta["model-index"][0]["results"][0]["dataset"] == {
        "name": "hamlet.txt",
        "type": "text",
        "split": "validation",
    }
    mdeq_meta, mdeq_text = push["mdeq_card_metadata"], push["mdeq_card_text"]
    assert mdeq_meta["pipeline_tag"] == "image-classification" and "accuracy" in mdeq_meta["metrics"]
    for needle in (
        "@inproceedings{bai2020multiscale",
        "@inproceedings{geng2021training",
        "@inproceedings{bai2019deep",
        "AutoImageProcessor",
        "random probe inputs",
        "Data: `digits`, scikit-learn's 1,797 8x8 handwritten digits (sklearn.datasets.load_digits)",
        "Evaluated on 8 examples.",
    ):
        assert needle in mdeq_text, needle
    assert mdeq_meta["model-index"][0]["results"][0]["dataset"]["name"].startswith("digits: ")
    assert "datasets" not in mdeq_meta
    validations = [entry for entry in hub_run["log"] if entry[1] == "/api/validate-yaml"]
    assert validations and all(status == 200 for _, _, status in validations)
    if "lm_card_validated_by_server" in push:
        assert push["lm_card_validated_by_server"]


def test_pushing_never_modifies_the_local_directory(hub_run):
    push = _completed(hub_run["push"])
    assert push["lm_dir_unchanged"] and push["mdeq_dir_unchanged"] and push["lm_dir_unchanged_after_errors"]
    assert push["leftover_staging"] == []


def test_remote_code_loads_where_hf_deq_cannot_be_imported(hub_run):
    remote = _completed(hub_run["remote"])
    assert remote["hf_deq_importable"] is False, "the client must not be able to import hf_deq"
    assert remote["hf_deq_in_sys_modules"] == []
    for key in (
        "lm_config_class",
        "lm_model_class",
        "lm_base_class",
        "mdeq_processor_class",
        "mdeq_model_class",
        "mdeq_base_class",
    ):
        assert remote[key].startswith("transformers_modules."), (key, remote[key])
    assert remote["lm_logits_identical"] and remote["lm_hidden_identical"] and remote["lm_generate_identical"]
    assert remote["lm_solver_stats_present"] and remote["tokenizer_ids_identical"]
    assert remote["mdeq_pixels_identical"] and remote["mdeq_logits_identical"] and remote["mdeq_base_runs"]
    assert remote["lm_without_trust"]["raised"] is not None
    assert "trust_remote_code" in remote["lm_without_trust"]["message"]


def test_trainer_push_to_hub(hub_run):
    push = _completed(hub_run["push"])
    assert push["trainer_logits_identical"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(push["trainer_repo_files"])


def test_model_push_to_hub_carries_card_code_and_tokenizer(hub_run):
    push = _completed(hub_run["push"])
    assert push["method_logits_identical"] and push["method_card_generated"]
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(
        push["method_repo_files"]
    )
    assert any(f.endswith(".py") for f in push["method_repo_files"])  # the remote-code bundle
    assert push["method_auto_map"]["AutoModelForCausalLM"].endswith("DEQTransformerForCausalLM")


def test_loading_again_offline_comes_from_the_cache(hub_run):
    offline = _completed(hub_run["offline"])
    assert offline["server_reachable"] is False and offline["offline_mode"] is True
    assert offline["lm_model_class"].startswith("hf_deq.")
    assert offline["mdeq_model_class"].startswith("transformers_modules.")
    assert offline["lm_logits_identical"] and offline["mdeq_logits_identical"]


def test_malformed_repo_ids_fail_clearly_before_any_request(hub_run):
    push = _completed(hub_run["push"])
    for i in range(6):
        result = push[f"malformed_{i}"]
        assert result["raised"] == "InvalidRepoIdError" and "ValueError" in result["mro"], result
        assert "invalid Hub repo id" in result["message"]
    assert push["malformed_requests_sent"] == 0
    assert push["cli_malformed_exit"] == 2 and "invalid Hub repo id" in push["cli_malformed_stderr"]


def test_server_refusals_give_clear_errors(hub_run):
    push = _completed(hub_run["push"])
    expectations = {
        "refused_401": ("HTTP 401", "HF_TOKEN"),
        "refused_404": ("HTTP 404", "not found"),
        "refused_500": ("HTTP 500", "server error"),
        "refused_500_create": ("HTTP 500", "creating the Hub repo"),
        "unreachable": ("could not reach the Hub", "127.0.0.1"),
    }
    for key, needles in expectations.items():
        result = push[key]
        assert result["raised"] == "HubPushError", (key, result)
        for needle in needles:
            assert needle in result["message"], (key, needle, result["message"])
    assert push["repo_unchanged_after_refusals"]
    assert push["files_after_refused_commit"] == [
        ".gitattributes"
    ]  # the refused commit left nothing remotely
    assert push["cli_401_exit"] == 1 and "HTTP 401" in push["cli_401_stderr"]
    assert push["cli_missing_dir_exit"] == 2 and "does not exist" in push["cli_missing_dir_stderr"]
