"""transformers' own common model tests (``ModelTesterMixin``, ``ConfigTester``), fetched at test time.

They ship in transformers' source distribution on PyPI, not in its wheel. ``common_testers()`` downloads the sdist of
the installed version once (``pip download --no-deps --no-binary :all:``), extracts the two modules into a cache
(``$HF_DEQ_TEST_CACHE`` or ``~/.cache/hf_deq``, under ``transformers-tests/<version>-<layout>/``), writes stand-ins
of our own for the modules they import that the sdist lacks, and imports them; no transformers test code is kept
in this repository. Where that fails (no network, no pip, an API change), the calling test module is skipped with
the reason.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import transformers

#: the package name the fetched tests are imported under (they use relative imports among themselves)
PACKAGE = "transformers_tests"
#: the modules taken from the sdist's ``tests/`` folder
FETCHED = ("test_modeling_common.py", "test_configuration_common.py")

#: stand-ins for modules the fetched ones import but the sdist lacks (our own code, not transformers')
STAND_INS = {
    "__init__.py": "",
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stand-in: the generation tests are not in the sdist; hf_deq tests generate() itself."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stand-in: the torch.export tests are not in the sdist; a DEQ solve is not exportable."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": (
        '"""Stand-in: PreTrainedConfig keyword arguments set to non-default values, which every config must keep\n'
        '(read by ConfigTester.check_config_arguments_init)."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["DEQTestArchitecture"],\n'
        '    "finetuning_task": "translation",\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        '    "tokenizer_class": "BertTokenizerFast",\n'
        "}\n"
    ),
}

_PIP_TIMEOUT_S = 180


def cache_root() -> Path:
    """Where the fetched tests of this transformers version live (kept between test sessions)."""
    override = os.environ.get("HF_DEQ_TEST_CACHE")
    base = (
        Path(override)
        if override
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_deq"
    )
    layout = hashlib.sha1(repr((FETCHED, STAND_INS)).encode()).hexdigest()[:8]  # new stand-ins: a new folder
    return base / "transformers-tests" / f"{transformers.__version__}-{layout}"


def _download_sdist(dest: Path) -> Path:
    version = transformers.__version__
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
    ]
    cmd += ["--retries", "1", "--timeout", "15", "-d", str(dest), f"transformers=={version}"]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"`pip download transformers=={version}` did not finish: {err}") from err
    sdists = sorted(dest.glob("transformers-*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(
            f"`pip download transformers=={version}` failed (exit {proc.returncode}): {tail[0]}"
        )
    return sdists[0]


def _extract(sdist: Path, target: Path) -> None:
    """Extract ``tests/<FETCHED>`` of ``sdist`` into ``target`` and write the stand-ins."""
    with tarfile.open(sdist) as tar:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in tar.getmembers()}
        for name in FETCHED:
            member = members.get(f"tests/{name}")
            if member is None or not member.isfile():
                raise RuntimeError(f"{sdist.name} has no tests/{name}")
            (target / name).write_bytes(tar.extractfile(member).read())
    for name, text in STAND_INS.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def fetch() -> Path:
    """Return the folder holding the ``transformers_tests`` package, downloading it on the first call."""
    root = cache_root()
    if (root / PACKAGE / FETCHED[-1]).is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        staging = Path(tmp) / PACKAGE
        staging.mkdir()
        _extract(_download_sdist(Path(tmp)), staging)
        try:  # atomic: a concurrent session either sees the whole package or none of it
            os.rename(staging, root / PACKAGE)
        except OSError:
            if not (root / PACKAGE / FETCHED[-1]).is_file():
                shutil.rmtree(root / PACKAGE, ignore_errors=True)
                os.rename(staging, root / PACKAGE)
    return root


#: why the fetch failed in this process (the next test module skips at once instead of asking pip again)
_fetch_error: dict[Path, str] = {}


def common_testers() -> tuple[ModuleType, ModuleType]:
    """``(test_modeling_common, test_configuration_common)`` of the installed transformers version; skips the
    calling test module with the reason where they cannot be fetched or imported."""
    key = cache_root()
    try:
        root = fetch() if key not in _fetch_error else None
    except (RuntimeError, OSError, tarfile.TarError) as err:
        _fetch_error[key], root = str(err), None
    if root is None:
        reason = _fetch_error[key]
        pytest.skip(
            f"transformers' common model tests could not be fetched: {reason}", allow_module_level=True
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except ImportError as err:
        pytest.skip(
            f"transformers {transformers.__version__}'s common model tests do not import here: {err}",
            allow_module_level=True,
        )
    return modeling, configuration


def register_model_names(modeling: ModuleType, model_type: str, **tables: str) -> None:
    """Tell the fetched tests which task each of our classes performs, as transformers' own name tables do for its
    models, e.g. ``MODEL_MAPPING_NAMES="MDEQModel"``: the common tests then train the task heads only and add the
    right ``labels``. Only the fetched module's copies of the tables change, never transformers' own."""
    for table, class_name in tables.items():
        names = dict(getattr(modeling, table))
        names[model_type] = class_name
        setattr(modeling, table, names)
