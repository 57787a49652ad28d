"""The scripts in examples/ run on reduced sizes and reach their headline numbers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"dnmf_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check_png(path: str) -> None:
    p = Path(path)
    assert p.is_file()
    assert p.read_bytes()[:8] == PNG_MAGIC
    assert p.stat().st_size < 300_000


def test_parts_based(tmp_path):
    result = _load("parts_based").main(tmp_path, scale=0.1)
    _check_png(result["png"])
    # Every one of the 17 true parts (16 limb positions and the torso) has a basis
    # image with cosine similarity > 0.9.
    assert result["swimmer_min_cosine"] > 0.9


def test_choose_rank(tmp_path):
    result = _load("choose_rank").main(tmp_path, scale=0.1)
    _check_png(result["png"])
    assert result["elbow"] == result["planted_k"]


def test_choose_k_digits(tmp_path):
    result = _load("choose_k_digits").main(tmp_path, scale=0.1)
    _check_png(result["png"])
    assert result["ks"][0] <= min(result["k_cv"], result["k_consensus"])
    assert max(result["k_cv"], result["k_consensus"]) <= result["ks"][-1]
    # At the k cross-validation chooses, the held-out pixels are predicted at least
    # 30 % better than with 2 components; the consensus factors reconstruct the digits.
    assert result["cv_gain"] > 0.3
    assert result["relative_error"] < 0.6
    chosen = result["consensus"].summary.set_index("k").loc[result["k_consensus"]]
    assert chosen["stability"] >= 0.8 or result["k_consensus"] == int(
        result["consensus"].summary.set_index("k")["stability"].idxmax())
    # A second run reads both sweeps back from their stores: the same choices.
    again = _load("choose_k_digits").main(tmp_path, scale=0.1)
    assert (again["k_cv"], again["k_consensus"]) == (result["k_cv"], result["k_consensus"])
    assert again["cv"].rows == result["cv"].rows


def test_spectrogram_separation(tmp_path):
    result = _load("spectrogram_separation").main(tmp_path, scale=0.1)
    _check_png(result["png"])
    assert min(result["correlations"]) > 0.9


def test_out_of_core(tmp_path):
    result = _load("out_of_core").main(tmp_path, scale=0.02)
    _check_png(result["png"])
    assert result["interrupted_at"] < 8
    assert result["relative_difference"] < 1e-6


def test_cluster_walkthrough(tmp_path):
    pytest.importorskip("distributed")
    result = _load("cluster_walkthrough").main(tmp_path, scale=0.02)
    _check_png(result["png"])
    # The same fit on 2 worker processes and on the threads scheduler ends at the same
    # loss; the run store of the cluster fit is complete; the cluster is gone.
    assert result["run_complete"]
    assert result["relative_difference"] < 1e-9
    assert result["H_difference"] < 1e-9
    assert not (tmp_path / "cluster_walkthrough_data").exists()


def test_guide_links_and_pictures_exist():
    """docs/guide.md and docs/examples.md link only to files (and headings) that exist."""
    import re

    docs = EXAMPLES.parent / "docs"
    for page in ("guide.md", "examples.md"):
        text = (docs / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (docs / path).resolve() if path else docs / page
            assert file.exists(), f"{page}: {target}"
            if anchor and file.suffix == ".md":
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                         for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
                assert anchor in slugs, f"{page}: {target}"


def test_topic_model(tmp_path):
    result = _load("topic_model").main(tmp_path, scale=0.3)
    _check_png(result["png"])
    # KL NMF on the CSR term counts recovers every planted topic: after Hungarian
    # matching, each shares at least 8 of its top-10 words with its recovered topic.
    assert result["overlap"].shape == (8,)
    assert result["overlap"].min() >= 0.8
    assert Path(result["png"]).stat().st_size < 150_000
