"""transformers' common model tests (fetched at test time by ``transformers_suite``) mark some tests with markers of
transformers' own test set-up; they are declared here so that pytest knows them."""

from __future__ import annotations

TRANSFORMERS_MARKERS = {
    "accelerate_tests": "transformers: needs accelerate",
    "flash_attn_test": "transformers: needs Flash Attention 2",
    "flash_attn_3_test": "transformers: needs Flash Attention 3",
    "flash_attn_4_test": "transformers: needs Flash Attention 4",
    "torch_compile_test": "transformers: runs torch.compile",
}


def pytest_configure(config):
    for name, description in TRANSFORMERS_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
